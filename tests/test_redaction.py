"""Credentials inside URIs (s3://KEY:SECRET@bucket/...) are never recorded: not in classify's
manifest, rows, summary or logs, nor in raycls's console log lines and error messages."""

from __future__ import annotations

import json
import logging

import pyarrow.parquet as pq
import pytest
from helpers import make_model, write_images

from raycls.bulk.output import MANIFEST
from raycls.config import ClassifyConfig
from raycls.io.storage import copy_dir, get_filesystem, read_bytes

SECRET = "s3cretvalue"


@pytest.mark.integration
def test_classify_records_no_credentials(ray_local, s3, tmp_path, caplog):
    from raycls.bulk.pipeline import classify

    bucket = s3.removeprefix("s3://")
    copy_dir(make_model(tmp_path / "model"), f"{s3}/cred-model")
    model = f"s3://KEYID:{SECRET}@{bucket}/cred-model"
    out = f"s3://KEYID:{SECRET}@{bucket}/cred-out"
    write_images(tmp_path / "images", 3)
    with caplog.at_level(logging.INFO):
        summary = classify(str(tmp_path / "images"), model, out, ClassifyConfig())
        # A rerun resumes: the recorded (redacted) identity still matches.
        again = classify(str(tmp_path / "images"), model, out, ClassifyConfig())
    assert summary["ok"] == 3 and again["shards_skipped"] == summary["shards"]
    shown = f"s3://***@{bucket}/cred-model"
    manifest = read_bytes(f"{out}/{MANIFEST}").decode()
    assert SECRET not in manifest and json.loads(manifest)["model_dir"] == shown
    fs, path = get_filesystem(out)
    rows = pq.read_table(path, filesystem=fs)
    assert set(rows.column("model").to_pylist()) == {shown}
    assert SECRET not in json.dumps(summary) and summary["output"].startswith("s3://***@")
    assert "classify" in caplog.text and SECRET not in caplog.text


def test_console_log_lines_and_cli_errors_are_redacted():
    import click

    from raycls.cli import RedactingFormatter, _fail

    record = logging.LogRecord(
        "raycls", logging.INFO, __file__, 1, "reading %s", (f"s3://K:{SECRET}@b/x",), None
    )
    assert RedactingFormatter("%(message)s").format(record) == "reading s3://***@b/x"
    with pytest.raises(click.ClickException) as failed:
        _fail(ValueError(f"no data at s3://K:{SECRET}@b/data"))
    assert failed.value.message == "no data at s3://***@b/data"


def test_sweep_settings_record_no_credentials_and_still_resume(tmp_path):
    from raycls.config import Config
    from raycls.io.storage import write_json
    from raycls.tune.space import build_search_space
    from raycls.tune.sweep import SETTINGS_FILE, _check_same_sweep, _settings

    space = build_search_space(None, Config())
    data = f"s3://K:{SECRET}@bucket/train"
    settings = _settings(Config(), space, data, None, 4, "asha", "random")
    write_json(str(tmp_path / SETTINGS_FILE), settings, indent=1)  # as run_sweep records it
    assert SECRET not in (tmp_path / SETTINGS_FILE).read_text()
    _check_same_sweep(tmp_path, settings)  # the same sweep resumes
    with pytest.raises(ValueError, match="train_data"):
        _check_same_sweep(tmp_path, _settings(Config(), space, "other", None, 4, "asha", "random"))
