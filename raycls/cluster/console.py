"""What reaches the console from Ray: raycls's own story, not Ray Data's per-dataset chatter.

Ray Data logs "Progress bars disabled ..." once per process and "Dataset ... execution
finished in N seconds" for every dataset it runs; training runs two datasets an epoch in
Ray Data's own actors, whose output Ray forwards to the driver. The driver's console handler
gets `RayDataNoiseFilter`; the workers of a local Ray read `ray_data_logging.yaml`, which sets
the same filter. Everything still goes to ray-data.log in the Ray session's logs folder.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

# Ray Data reads its logging config from this file in every process (Ray 2.60).
RAY_DATA_LOGGING_ENV = "RAY_DATA_LOGGING_CONFIG"
RAY_DATA_LOGGING_FILE = Path(__file__).with_name("ray_data_logging.yaml")
NOISE = ("Progress bars disabled.", " execution finished in ")


class RayDataNoiseFilter(logging.Filter):
    """Drops the Ray Data console lines in NOISE (messages as of Ray 2.60)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(part in message for part in NOISE)


def quiet_local_workers() -> None:
    """Workers of a local Ray started after this inherit the quiet Ray Data config.

    Not for clusters: the file's path is this machine's, and a job's workers may not have it.
    """
    if RAY_DATA_LOGGING_FILE.is_file():
        os.environ.setdefault(RAY_DATA_LOGGING_ENV, str(RAY_DATA_LOGGING_FILE))


def quiet_driver(logger: logging.Logger) -> None:
    """Add the filter to `logger`'s console handlers (once)."""
    for handler in logger.handlers:
        is_console = isinstance(handler, logging.StreamHandler)
        if is_console and not any(isinstance(f, RayDataNoiseFilter) for f in handler.filters):
            handler.addFilter(RayDataNoiseFilter())
