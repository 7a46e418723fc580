"""train, tune and classify with inputs and --out on S3: a moto server (the `s3` fixture of
conftest.py) and the session's local Ray. Classify runs the model that train wrote to the
bucket, as a user would."""

from __future__ import annotations

import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from helpers import make_model, object_names, tiny_config, write_images

from raycls.bulk.output import MANIFEST, OutputDir, part_name, result_schema
from raycls.config import ClassifyConfig, load_config
from raycls.demo.datasets import make_dataset
from raycls.io.storage import copy_dir, get_filesystem
from raycls.tune.results import TERMINATED


def _read(uri: str) -> pa.Table:
    """A file, or a folder of Parquet files as a dataset (names starting with _ or . skipped)."""
    fs, path = get_filesystem(uri)
    return pq.read_table(path, filesystem=fs)


@pytest.fixture(scope="module")
def shapes(s3, tmp_path_factory) -> str:
    """The shapes data set at 32 px (9 classes) in the bucket; returns its URI."""
    root = tmp_path_factory.mktemp("shapes")
    make_dataset("shapes", root, per_class=4, size=32)
    copy_dir(str(root), f"{s3}/shapes")
    return f"{s3}/shapes"


@pytest.fixture(scope="module")
def trained(ray_local, s3, shapes) -> dict:
    """One epoch of a tiny image-only model on 1 worker, data and --out in the bucket."""
    from raycls.train.trainer import fit

    config = tiny_config(epochs=1, num_workers=1)
    out = f"{s3}/train"
    result = fit(config, f"{shapes}/train", out, val_data=f"{shapes}/val")
    return {"config": config, "out": out, "result": result}


def test_ray_workers_see_the_endpoint(ray_local, s3):
    """The premise of the fixtures: Ray started after the endpoint was set."""

    @ray_local.remote
    def endpoint() -> str | None:
        return os.environ.get("AWS_ENDPOINT_URL")

    assert ray_local.get(endpoint.remote()) == os.environ["AWS_ENDPOINT_URL"]


def test_a_shard_that_fails_mid_write_is_never_committed(s3, monkeypatch):
    """pyarrow completes an object-store upload whenever its stream closes, even on the way
    out of an error; a shard must reach the store whole or not at all."""
    import raycls.bulk.output

    def fail_halfway(table, where, filesystem=None, **kwargs):
        sink = filesystem.open_output_stream(where) if filesystem is not None else where
        with sink:  # as pyarrow's ParquetWriter does
            sink.write(b"PAR1")
            raise OSError("simulated failure halfway through a shard")

    out = OutputDir(f"{s3}/torn")
    manifest = {"identity": {"model_sha256": "m"}}
    assert out.prepare(manifest, overwrite=False) == set()
    table = result_schema("path").empty_table()
    monkeypatch.setattr(raycls.bulk.output.pq, "write_table", fail_halfway)
    with pytest.raises(OSError, match="simulated"):
        out.write_shard(0, table)
    monkeypatch.undo()
    assert object_names(out.uri) == {MANIFEST}
    assert out.prepare(manifest, overwrite=False) == set()  # a rerun redoes shard 0
    out.write_shard(0, table)
    assert out.prepare(manifest, overwrite=False) == {0}
    assert _read(f"{out.uri}/{part_name(0)}").schema == result_schema("path")


def test_train_writes_model_and_checkpoints_to_the_bucket(trained, shapes):
    from raycls.train.trainer import fit

    out, result = trained["out"], trained["result"]
    assert result["status"] == "finished" and result["epochs_run"] == 1
    names = object_names(out)
    assert {"config.json", "model.safetensors", "metrics.json", "history.json"} <= names
    kept = [n for n in names if n.startswith("ray_train/train/checkpoint_")]
    assert any(n.endswith("/model/model.safetensors") for n in kept), sorted(names)
    # The rerun reads metrics.json back from the bucket and does not train again.
    again = fit(trained["config"], f"{shapes}/train", out, val_data=f"{shapes}/val")
    assert again["already_finished"] and again["val_accuracy"] == result["val_accuracy"]


def test_classify_from_and_to_the_bucket_writes_each_row_once(s3, trained, tmp_path):
    from raycls.bulk.pipeline import classify

    images = write_images(tmp_path / "in", 10)
    source, out, model = f"{s3}/in", f"{s3}/preds", trained["out"]  # the model from S3 too
    copy_dir(str(tmp_path / "in"), source)
    config = ClassifyConfig(shard_size=4, batch_size=4)
    summary = classify(source, model, out, config)
    assert (summary["shards_done"], summary["rows"], summary["ok"]) == (3, 10, 10)
    assert object_names(out) == {MANIFEST, *(part_name(i) for i in range(3))}  # no temp objects
    expected = [f"{source}/{p.name}" for p in images]
    assert sorted(_read(out).column("path").to_pylist()) == expected

    fs, base = get_filesystem(out)
    fs.delete_file(f"{base}/{part_name(1)}")
    summary = classify(source, model, out, config)
    assert (summary["shards_done"], summary["shards_skipped"], summary["rows"]) == (1, 2, 4)
    assert summary["total_rows"] == 10
    table = _read(out)
    assert sorted(table.column("path").to_pylist()) == expected
    assert set(table.column("model").to_pylist()) == {model}

    other = make_model(tmp_path / "other")
    with pytest.raises(ValueError, match="different run"):
        classify(source, other, out, config)


def test_evaluate_a_model_in_the_bucket_into_the_bucket(s3, trained, shapes):
    from raycls.train.evaluation import METRICS_FILE, evaluate

    metrics = evaluate(trained["out"], f"{shapes}/val", f"{s3}/report")
    assert metrics["report_dir"] == f"{s3}/report"
    assert object_names(f"{s3}/report") == {METRICS_FILE, "confusion_matrix.png", "report.html"}
    # The same model on the same images as training's own validation pass.
    assert metrics["accuracy"] == pytest.approx(trained["result"]["val_accuracy"])


def test_cli_evaluates_bucket_model_and_data_with_a_config(s3, trained, shapes, tmp_path):
    """`raycls evaluate s3://.../model s3://.../data --config c.yaml`: the data settings of the
    file and of `a.b=value` overrides reach the reading (shapes images are 32x32 = 1024 px)."""
    from raycls.cli import cli
    from raycls.io.storage import read_json

    config = tmp_path / "c.yaml"
    config.write_text("data:\n  max_pixels: 2000\n  label_column: label\n")
    model, data = trained["out"], f"{shapes}/val"
    result = CliRunner().invoke(cli, ["evaluate", model, data, "--config", str(config)])
    assert result.exit_code == 0, result.output
    assert f"Report: {model}/evaluation" in result.output
    assert {"evaluation/metrics.json", "evaluation/confusion_matrix.png"} <= object_names(model)
    metrics = read_json(f"{model}/evaluation/metrics.json")
    assert metrics["accuracy"] == pytest.approx(trained["result"]["val_accuracy"])
    assert metrics["bad_count"] == 0
    refused = CliRunner().invoke(
        cli, ["evaluate", model, data, "--config", str(config), "data.max_pixels=1000"]
    )
    assert refused.exit_code != 0 and "no readable labelled images" in refused.output


def test_sweep_writes_results_and_best_model_to_the_bucket(ray_local, s3, shapes):
    from raycls.tune.sweep import SETTINGS_FILE, run_sweep

    out = f"{s3}/sweep"
    args = (tiny_config(), f"{shapes}/train", f"{shapes}/val", out)
    kwargs = {
        "max_concurrent": 2,
        "epochs": 1,
        "search_space": {"model.fusion": "image_only"},
        "scheduler": "none",
        "resources_per_trial": {"cpu": 0.5},
    }
    summary = run_sweep(*args, num_samples=2, **kwargs)

    names = object_names(out)
    expected = {"results.parquet", "results.csv", "val_metric_per_epoch.png", "summary.json",
                "best_config.yaml", SETTINGS_FILE, "best_model/config.json",
                "best_model/model.safetensors"}  # fmt: skip
    assert expected <= names
    assert any(n.startswith("sweep/experiment_state") for n in names)
    table = _read(f"{out}/results.parquet").to_pandas()
    assert len(table) == 2 and set(table["status"]) == {TERMINATED}
    assert table["best_checkpoint"].str.startswith(f"{out}/trials/").all()
    assert summary["best_model"] == f"{out}/best_model"
    assert summary["best_config"] == f"{out}/best_config.yaml"
    # `raycls train --config s3://.../best_config.yaml` reads the winner back from the bucket.
    best_config = load_config(summary["best_config"])
    assert best_config.model == tiny_config().model and best_config.train.epochs == 1
    for trial_id in table["trial_id"]:
        assert {f"trials/{trial_id}/starts.txt", f"trials/{trial_id}/done.json"} <= names

    with pytest.raises(ValueError, match="num_samples"):  # another sweep: refused before Ray
        run_sweep(*args, num_samples=3, **kwargs)


def test_storage_helpers_on_the_bucket(s3, tmp_path):
    from raycls.io import storage

    assert storage.with_scheme(s3.removeprefix("s3://") + "/x/ckpt", f"{s3}/x") == f"{s3}/x/ckpt"
    storage.append_text(f"{s3}/helpers/starts.txt", "1\n")
    storage.append_text(f"{s3}/helpers/starts.txt", "2\n")
    assert storage.read_bytes(f"{s3}/helpers/starts.txt") == b"1\n2\n"
    assert storage.read_bytes(f"{s3}/helpers/none.txt") is None
    assert storage.is_dir(f"{s3}/helpers") and not storage.is_dir(f"{s3}/nothing")
    (tmp_path / "m" / "sub").mkdir(parents=True)
    (tmp_path / "m" / "sub" / "a.bin").write_bytes(b"a")
    storage.copy_dir(str(tmp_path / "m"), f"{s3}/copy")
    assert object_names(f"{s3}/copy") == {"sub/a.bin"}
    with storage.local_copy(f"{s3}/copy") as folder:
        assert (Path(folder) / "sub" / "a.bin").read_bytes() == b"a"
    assert not Path(folder).exists()  # a bucket's copy is gone after the block
    with storage.local_copy(str(tmp_path / "m")) as folder:
        assert folder == str(tmp_path / "m")  # a local folder is used in place, and kept
    assert (tmp_path / "m" / "sub" / "a.bin").exists()


def test_copies_from_a_bucket_never_write_outside_their_folder(s3, tmp_path, monkeypatch):
    """A key like m/bert/../../m/bert/config.json lists under m/bert, its GET resolves to an
    object that exists, and a copy following its name wrote outside the target folder."""
    import boto3

    from raycls.io import storage

    bucket = s3.removeprefix("s3://")
    client = boto3.client("s3")
    for key in ("hostile/config.json", "hostile/bert/config.json",
                "hostile/bert/../../hostile/bert/config.json"):  # fmt: skip
        client.put_object(Bucket=bucket, Key=key, Body=b"{}")
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    with pytest.raises(ValueError, match=r"holds a file named 'bert/\.\./\.\./hostile/bert/"):
        with storage.local_copy(f"{s3}/hostile", only=("config.json", "bert")):
            pass
    with pytest.raises(ValueError, match="which a copy would write outside its folder"):
        storage.copy_dir(f"{s3}/hostile", str(tmp_path / "dst" / "model"))
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == []
