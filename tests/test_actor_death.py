"""Strict retries on real Ray (issue 12, item 17): a classify actor dies right after handing
on a shard's results; Ray restarts it and retries the task, and every image is still written
exactly once, with no shard reported incomplete."""

from __future__ import annotations

import os
import sys
import time

import pytest
from helpers import make_model, read_output, write_images

from raycls.bulk.stages import ClassifyStage
from raycls.config import ClassifyConfig


class DiesOnceAfterYielding(ClassifyStage):
    """A test-only stand-in for ClassifyStage: the first actor to finish a batch waits for the
    driver to commit it, then exits hard (no cleanup, as a killed worker would)."""

    def __call__(self, batch):
        yield from super().__call__(batch)
        try:  # exactly one death per test: the marker sits beside the test's model
            os.close(os.open(self.marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except FileExistsError:
            return
        deadline = time.monotonic() + 60
        while not any(f.startswith("part-") for f in os.listdir(self.out)):
            if time.monotonic() > deadline:
                break
            time.sleep(0.05)
        os._exit(1)

    def __init__(self, model, **kwargs) -> None:
        super().__init__(model, **kwargs)
        model_dir = model["source"] if isinstance(model, dict) else model  # a ModelSpec dict
        self.marker = model_dir.rstrip("/") + ".died"
        self.out = os.path.join(os.path.dirname(model_dir.rstrip("/")), "out")


@pytest.mark.integration
def test_actor_death_after_yielding_loses_and_repeats_nothing(ray_local, tmp_path, monkeypatch):
    from ray import cloudpickle

    from raycls.bulk.pipeline import classify

    # Ray's workers cannot import test modules: ship this one's code by value.
    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    request_cleanup = cloudpickle.unregister_pickle_by_value
    model_dir = make_model(tmp_path / "m")
    (tmp_path / "m" / "out").mkdir()
    images = write_images(tmp_path / "imgs", 12)
    monkeypatch.setattr("raycls.bulk.stages.ClassifyStage", DiesOnceAfterYielding)
    config = ClassifyConfig(shard_size=4, batch_size=4)
    try:
        summary = classify(str(tmp_path / "imgs"), model_dir, str(tmp_path / "m" / "out"), config)
    finally:
        request_cleanup(sys.modules[__name__])
    assert os.path.exists(model_dir + ".died"), "no actor died: the test proves nothing"
    assert summary["total_ok"] == 12 and summary["shards_done"] == 3
    keys = read_output(tmp_path / "m" / "out").column("path").to_pylist()
    assert keys == [str(p) for p in images]
