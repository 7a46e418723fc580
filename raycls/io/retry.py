"""Retries for storage reads: transient errors (throttling, a dropped connection, credentials
about to be refreshed) are tried again with backoff; permanent ones (no such file, access
denied) and problems with the data itself are not. No Ray import.
"""

from __future__ import annotations

import logging
import random
import re
import time
from collections.abc import Callable
from typing import TypeVar

logger = logging.getLogger(__name__)

T = TypeVar("T")

ATTEMPTS = 5
FIRST_DELAY_S = 0.5
MAX_DELAY_S = 8.0
# Words of the messages of pyarrow's S3/GCS/Azure filesystems ("AWS Error SLOW_DOWN during
# GetObject operation: ...") and of the services' own error codes that mean "try again".
_TRANSIENT = re.compile(
    r"SLOW_?DOWN|THROTTL|TOO_?MANY_?REQUESTS|REQUEST_?LIMIT_?EXCEEDED|NETWORK_?CONNECTION"
    r"|REQUEST_?TIME_?OUT|SERVICE_?UNAVAILABLE|INTERNAL_?(FAILURE|ERROR)|EXPIRED_?TOKEN"
    r"|REQUEST_?EXPIRED|TOKEN_?REFRESH|CONNECTION (RESET|REFUSED|ABORTED)|TIMED OUT|CURLCODE"
    r"|BROKEN PIPE|HTTP (STATUS )?(429|5\d\d)|RESPONSE CODE (429|5\d\d)",
    re.IGNORECASE,
)
_PERMANENT = (FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError)


class TransientReadError(OSError):
    """A read that kept failing for a reason that may pass (throttling, an outage)."""


def is_transient(error: BaseException) -> bool:
    """True for errors worth retrying: connection failures, timeouts and the storage errors
    (throttling, service unavailable, expired credentials) named in `_TRANSIENT`."""
    if isinstance(error, TransientReadError):
        return True
    if isinstance(error, _PERMANENT) or not isinstance(error, OSError):
        return False
    if isinstance(error, ConnectionError | TimeoutError | InterruptedError):
        return True
    return bool(_TRANSIENT.search(str(error)))


def with_retries(read: Callable[[], T], what: str, attempts: int = ATTEMPTS) -> T:
    """`read()`, tried again with exponential backoff (and jitter) on transient errors.

    Raises:
        TransientReadError: the error was still transient after `attempts` tries; the
            caller should fail the shard (so a rerun retries it), not record an error row.
        Exception: any permanent error, at once and unchanged.
    """
    delay = FIRST_DELAY_S
    for attempt in range(1, attempts + 1):
        try:
            return read()
        except Exception as e:
            if not is_transient(e):
                raise
            if attempt == attempts:
                raise TransientReadError(
                    f"reading {what} failed {attempts} times with a transient error; the last: "
                    f"{type(e).__name__}: {e}"
                ) from e
            logger.warning("reading %s: %s: %s; retry %d in %.1f s", what, type(e).__name__,
                           e, attempt, delay)  # fmt: skip
            time.sleep(delay * random.uniform(0.5, 1.0))
            delay = min(delay * 2, MAX_DELAY_S)
    raise AssertionError("unreachable")
