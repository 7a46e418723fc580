"""The console shows raycls's story: Ray Data's per-dataset chatter is filtered (no Ray)."""

from __future__ import annotations

import logging
import os
import subprocess
import sys

from raycls.cluster.console import (
    RAY_DATA_LOGGING_ENV,
    RAY_DATA_LOGGING_FILE,
    RayDataNoiseFilter,
    quiet_driver,
)

CHATTER = (
    "Progress bars disabled. To enable, set "
    "`ray.data.DataContext.get_current().enable_progress_bars = True`.",
    "✔️  Dataset train_0357_1 execution finished in 0.25 seconds",
)


def _record(message: str, level: int = logging.WARNING) -> logging.LogRecord:
    return logging.LogRecord("ray.data.x", level, __file__, 1, message, None, None)


def test_filter_drops_the_chatter_and_keeps_other_warnings():
    noise = RayDataNoiseFilter()
    assert not any(noise.filter(_record(message)) for message in CHATTER)
    assert noise.filter(_record("Dataset execution failed: disk full"))


def test_driver_console_handler_gets_the_filter_once():
    logger = logging.getLogger("raycls.test.console")
    handler = logging.StreamHandler()
    logger.addHandler(handler)
    try:
        quiet_driver(logger)
        quiet_driver(logger)
        assert sum(isinstance(f, RayDataNoiseFilter) for f in handler.filters) == 1
    finally:
        logger.removeHandler(handler)


def test_workers_ray_data_config_filters_the_console():
    """What a local Ray's worker does on `import ray.data` with the variable init_ray sets."""
    code = "\n".join(
        [
            "import logging, ray.data",
            "log = logging.getLogger('ray.data._internal.progress')",
            *(f"log.warning({message!r})" for message in CHATTER),
            "log.info('an execution plan')",
            "log.warning('a real warning')",
        ]
    )
    env = {**os.environ, RAY_DATA_LOGGING_ENV: str(RAY_DATA_LOGGING_FILE)}
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    printed = done.stdout + done.stderr
    assert "a real warning" in printed
    assert "execution finished" not in printed and "Progress bars" not in printed
    assert "an execution plan" not in printed
