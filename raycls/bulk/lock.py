"""One classify run per OUT_DIR: a lock object (`_lock.json`) with the run's id, host, pid and
a heartbeat that a background thread renews. A second run fails fast; a lock whose heartbeat
stopped (a killed run on another machine) is taken over after `STALE_AFTER_S`, at once when
its process is gone from this machine. No Ray import.

Locally the lock is created exclusively (O_EXCL). Object stores through pyarrow have no
exclusive create: there the lock is written, read back after `SETTLE_S` and kept only if it
still names this run; each heartbeat checks again, and a run that lost its lock stops before
committing another file.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid
from typing import Any

import pyarrow.fs as pafs

logger = logging.getLogger(__name__)

LOCK = "_lock.json"
HEARTBEAT_S = 30.0
STALE_AFTER_S = 300.0
SETTLE_S = 1.0


class OutputBusyError(ValueError):
    """OUT_DIR is locked by another run."""


class OutputLock:
    """Context manager holding the lock on the folder `path` of `fs` (shown to users as `uri`)."""

    def __init__(
        self,
        fs: pafs.FileSystem,
        path: str,
        uri: str,
        *,
        stale_after_s: float = STALE_AFTER_S,
        heartbeat_s: float = HEARTBEAT_S,
    ) -> None:
        self.fs, self.uri = fs, uri
        self.path = f"{path.rstrip('/')}/{LOCK}"
        self.run_id = uuid.uuid4().hex
        self.stale_after_s, self.heartbeat_s = stale_after_s, heartbeat_s
        self.local = isinstance(fs, pafs.LocalFileSystem)
        self.lost: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> OutputLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def acquire(self) -> None:
        """Take the lock, or raise OutputBusyError naming the run that holds it."""
        self.fs.create_dir(self.path.rsplit("/", 1)[0], recursive=True)
        held = self._read()
        if held is not None and not self._stale(held):
            raise OutputBusyError(self._busy(held))
        if held is None and self.local:
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                raise OutputBusyError(self._busy(self._read() or {})) from None
            with os.fdopen(fd, "wb") as f:
                f.write(self._record())
        else:
            if held is not None:
                logger.warning("taking over the stale lock of %s: %s", self.uri, held)
            self._write()
            time.sleep(SETTLE_S)
            now = self._read()
            if now is None or now.get("run_id") != self.run_id:
                raise OutputBusyError(self._busy(now or {}))
        self._thread = threading.Thread(target=self._beat, name="raycls-out-lock", daemon=True)
        self._thread.start()

    def check(self) -> None:
        """Raise RuntimeError if another run took the lock over (do not commit anything)."""
        if self.lost:
            raise RuntimeError(self.lost)

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        held = self._read()
        if held is not None and held.get("run_id") == self.run_id:
            self.fs.delete_file(self.path)

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat_s) and self.beat():
            pass

    def beat(self) -> bool:
        """Renew the heartbeat; False (and `lost` set) if another run holds the lock now."""
        try:
            held = self._read()
            if held is None or held.get("run_id") != self.run_id:
                self.lost = (
                    f"lost the lock on {self.uri} to another run ({held}); stopped before "
                    "committing more results: run again once that run has finished"
                )
                return False
            self._write()
        except Exception as e:  # a failed heartbeat is retried at the next one
            logger.warning("lock heartbeat on %s failed: %s", self.uri, e)
        return True

    def _record(self) -> bytes:
        return json.dumps({"run_id": self.run_id, "host": socket.gethostname(),
                           "pid": os.getpid(), "heartbeat": time.time()}).encode()  # fmt: skip

    def _write(self) -> None:
        if self.local:  # readers never see half a file
            tmp = f"{self.path}.{self.run_id}.tmp"
            with open(tmp, "wb") as f:
                f.write(self._record())
            os.replace(tmp, self.path)
            return
        with self.fs.open_output_stream(self.path) as f:
            f.write(self._record())

    def _read(self) -> dict[str, Any] | None:
        info = self.fs.get_file_info(self.path)
        if info.type != pafs.FileType.File:
            return None
        try:
            with self.fs.open_input_stream(self.path) as f:
                held = json.loads(f.read())
            if not isinstance(held, dict):
                raise ValueError("not a JSON object")
            return held
        except (ValueError, FileNotFoundError):
            # Damaged (or deleted meanwhile): judged by the file's age alone.
            mtime = info.mtime.timestamp() if info.mtime else 0.0
            return {"run_id": None, "heartbeat": mtime}

    def _stale(self, held: dict[str, Any]) -> bool:
        if held.get("host") == socket.gethostname() and isinstance(held.get("pid"), int):
            try:
                os.kill(held["pid"], 0)
            except ProcessLookupError:
                return True
            except PermissionError:
                pass
        age = time.time() - float(held.get("heartbeat") or 0.0)
        return age > self.stale_after_s

    def _busy(self, held: dict[str, Any]) -> str:
        age = time.time() - float(held.get("heartbeat") or 0.0)
        return (
            f"{self.uri} is in use by another classify run (run {held.get('run_id')} on "
            f"{held.get('host')}, pid {held.get('pid')}, last heartbeat {age:.0f} s ago). Wait "
            f"for it to finish or choose another OUT_DIR; a lock whose heartbeat stopped "
            f"{self.stale_after_s:.0f} s ago is taken over (delete {self.uri}/{LOCK} only if "
            "you are sure no run uses it)"
        )
