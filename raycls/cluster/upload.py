"""What `raycls submit` uploads as a job's working dir: code and configs, never secrets or data.

From this source checkout only the package, jobs/, configs/ and pyproject.toml go, plus files
the command names (a --config file); from a --working-dir everything but the exclusions below.
Either way secrets, local data, models and outputs stay behind, and an upload past
MAX_UPLOAD_MB is refused. The files are copied to a staging folder and that folder is uploaded,
so what the cluster receives is exactly the list that was printed.
"""

from __future__ import annotations

import contextlib
import fnmatch
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

# From a source checkout, only these top-level entries (and files the command names).
CHECKOUT_ENTRIES = ("raycls", "jobs", "configs", "pyproject.toml")
# Never uploaded, at any depth: dotenv, keys, cloud and SSH credentials.
SECRET_FILES = (".env", ".env.*", "*.pem", "*.key", "id_rsa*", "id_dsa*", "id_ecdsa*",
                "id_ed25519*", "*credentials*", ".netrc", ".pypirc", ".git-credentials",
                "*.p12", "*.pfx", "*.kdbx")  # fmt: skip
SECRET_DIRS = (".aws", ".ssh", ".gnupg", ".docker", ".kube", ".config")
# Never uploaded, at any depth: environments, history, caches.
CACHE_DIRS = (".git", ".venv", "venv", "__pycache__", ".pytest_cache", ".ruff_cache",
              ".mypy_cache", "node_modules", ".ipynb_checkpoints")  # fmt: skip
# Never uploaded from the top of the working dir: local data, models and outputs (the README's
# examples write these). Deeper folders of these names (raycls/models) are code.
DATA_DIRS = ("data", "models", "out", "quickstart", "runs")
# Weights and data files: the cluster reads those from storage (s3://...), not from the upload.
DATA_FILES = ("*.safetensors", "*.pt", "*.pth", "*.ckpt", "*.bin", "*.onnx", "*.parquet",
              "*.tar", "*.tar.gz", "*.tgz", "*.zip", "*.npy", "*.npz", "*.jpg", "*.jpeg",
              "*.png")  # fmt: skip
# Never staged: Ray would apply these to the staged folder and upload less than was printed.
IGNORE_FILES = (".gitignore", ".rayignore")
MAX_UPLOAD_MB = 50.0
_MB = 1024 * 1024


@dataclass
class Upload:
    """The files of one upload (paths relative to `root`) and what was left behind, and why."""

    root: Path
    files: dict[str, int] = field(default_factory=dict)  # relative path -> bytes
    skipped: dict[str, str] = field(default_factory=dict)  # relative path -> reason

    @property
    def size(self) -> int:
        return sum(self.files.values())

    def describe(self) -> str:
        """One line for the console: how much goes up, from where, what stays behind."""
        line = f"Uploading {len(self.files)} files ({self.size / _MB:.2f} MiB) from {self.root}"
        secrets = sorted(p for p, why in self.skipped.items() if why == "secret")
        if secrets:
            shown = ", ".join(secrets[:5]) + (", ..." if len(secrets) > 5 else "")
            line += f"; left behind as secrets: {shown}"
        if len(self.skipped) > len(secrets):
            line += f"; {len(self.skipped) - len(secrets)} more left out (data, caches, links)"
        return line


def _reason(relative: str, is_dir: bool, top: bool) -> str | None:
    """Why `relative` (a path inside the working dir) is not uploaded; None when it is."""
    name = os.path.basename(relative)
    if (is_dir and name in SECRET_DIRS) or (not is_dir and _matches(name, SECRET_FILES)):
        return "secret"
    if is_dir and (name in CACHE_DIRS or (top and name in DATA_DIRS)):
        return "data"
    if not is_dir and _matches(name, DATA_FILES):
        return "data"
    if not is_dir and name in IGNORE_FILES:
        return "ignore-list"
    return None


def _matches(name: str, patterns: tuple[str, ...]) -> bool:
    return any(fnmatch.fnmatch(name.lower(), pattern) for pattern in patterns)


def _walk(root: Path, start: Path, upload: Upload) -> None:
    """Add the files under `start` (a file or folder inside `root`) that may go up."""
    relative = start.relative_to(root).as_posix()
    top = start.parent == root
    if start.is_symlink() and (start.is_dir() or not start.resolve().is_relative_to(root)):
        # Linked folders could loop or lead anywhere; a linked file may point out of the folder.
        upload.skipped[relative] = "link"
        return
    why = _reason(relative, start.is_dir(), top)
    if why is not None:
        upload.skipped[relative] = why
        return
    if start.is_file():
        upload.files[relative] = start.stat().st_size
        return
    for child in sorted(start.iterdir()):
        _walk(root, child, upload)


def plan_upload(
    root: Path,
    *,
    checkout: bool,
    named: Sequence[str] = (),
    max_mb: float = MAX_UPLOAD_MB,
) -> Upload:
    """The files to upload from `root`; raises ValueError past `max_mb`.

    Args:
        checkout: `root` is this source checkout: only CHECKOUT_ENTRIES and `named` go.
        named: the command's arguments; those that are files inside `root` go too.
    """
    root = root.resolve()
    upload = Upload(root)
    if checkout:
        starts = [root / entry for entry in CHECKOUT_ENTRIES if (root / entry).exists()]
        for arg in named:
            arg = arg.rpartition("=")[2]  # --config=x.yaml
            path = (root / arg).resolve() if arg else root
            if path.is_file() and path.is_relative_to(root) and path not in starts:
                starts.append(path)
    else:
        starts = sorted(root.iterdir())
    for start in starts:
        _walk(root, start, upload)
    if upload.size > max_mb * _MB:
        biggest = sorted(upload.files.items(), key=lambda item: -item[1])[:5]
        listed = ", ".join(f"{path} ({size / _MB:.1f} MiB)" for path, size in biggest)
        raise ValueError(
            f"The job's upload from {root} would be {upload.size / _MB:.1f} MiB, over the "
            f"{max_mb:g} MiB limit; the biggest files: {listed}. Keep data and models in "
            "storage the cluster reads (s3://..., gs://...), pass --working-dir with only code "
            "and configs, or raise the limit with --max-upload-mb."
        )
    return upload


@contextlib.contextmanager
def staged(upload: Upload) -> Iterator[str]:
    """A temporary folder holding exactly `upload`'s files, deleted on leaving the block."""
    with tempfile.TemporaryDirectory(prefix="raycls-upload-") as folder:
        for relative in upload.files:
            target = Path(folder, relative)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(upload.root / relative, target)
        yield folder
