"""raycls classify: the bulk pipeline end to end on a tiny fused model and a tiny captioner."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from helpers import check_rows, image_bytes, make_model, read_output, result_rows, write_images
from tiny_models import make_tiny_captioner

from raycls.bulk.output import MANIFEST, OutputDir, ShardCollector, result_schema
from raycls.cli import cli
from raycls.config import ClassifyConfig


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> str:
    return make_model(tmp_path_factory.mktemp("model"))


@pytest.fixture(scope="module")
def captioner(tmp_path_factory) -> str:
    return make_tiny_captioner(tmp_path_factory.mktemp("captioner"))


# Unit tests: no Ray.


def test_collector_writes_a_shard_once_complete_and_drops_repeats():
    collector = ShardCollector(result_schema("path"), "m")

    rows = result_rows

    assert collector.add(pa.concat_tables([rows(0, [2, 0], 3), rows(1, [0], 1)]))[0][0] == 1
    assert collector.in_flight == 1
    done = collector.add(pa.concat_tables([rows(0, [0], 3), rows(0, [1], 3)]))
    assert [i for i, _ in done] == [0] and collector.in_flight == 0
    table = done[0][1]
    assert table.schema == result_schema("path")
    assert table.column("path").to_pylist() == ["s0r0", "s0r1", "s0r2"]
    assert table.column("model").to_pylist() == ["m"] * 3


def test_stages_run_without_ray(tmp_path, model_dir):
    """read -> decode -> classify as plain calls; an all-null text column arrives as NaN."""
    from raycls.bulk.read import read_shards
    from raycls.bulk.stages import ClassifyStage, decode_rows
    from raycls.io.inputs import plan_shards

    write_images(tmp_path / "imgs", 3)
    (tmp_path / "imgs" / "zero.jpg").write_bytes(b"")
    shard = plan_shards(str(tmp_path / "imgs"), 10, text_column=None)[0]
    (table,) = read_shards(pa.table({"shard": [json.dumps(shard.to_dict())]}))
    assert table.column("shard_rows").to_pylist() == [4] * 4
    batch = {name: table.column(name).to_numpy(zero_copy_only=False) for name in table.column_names}
    batch["text"] = np.array([np.nan, "a cat", np.nan, np.nan], dtype=object)
    first, decoded = decode_rows(batch, size=32, max_pixels=10**6, caption_size=16, chunk_rows=2)
    decoded = {k: np.concatenate([first[k], decoded[k]]) for k in decoded}
    assert decoded["pixels"].shape == (4, 3, 32, 32) and "image" not in decoded
    assert decoded["caption_image"].shape == (4, 16, 16, 3)
    assert decoded["wants_caption"].tolist() == [True, False, True, False]  # zero.jpg: no image
    decoded.pop("caption_image"), decoded.pop("wants_caption")
    result = pa.concat_tables(ClassifyStage(model_dir, top_k=2, batch_size=3)(decoded))
    assert result.column("status").to_pylist() == ["ok", "ok", "ok", "error"]
    assert result.column("label").null_count == 1 and "empty" in result.column("error")[3].as_py()


def test_refuses_another_model_or_stray_files(tmp_path, model_dir):
    from raycls.bulk.pipeline import _manifest, classify
    from raycls.io.inputs import plan_shards

    write_images(tmp_path / "imgs", 3)
    other = make_model(tmp_path / "other", seed=1)
    config = ClassifyConfig(shard_size=2)
    out = OutputDir(str(tmp_path / "out"))
    shards = plan_shards(str(tmp_path / "imgs"), 2, text_column=None)
    out.prepare(_manifest(str(tmp_path / "imgs"), model_dir, shards, config), overwrite=False)
    with pytest.raises(ValueError, match="model_sha256.*--overwrite"):
        classify(str(tmp_path / "imgs"), other, str(tmp_path / "out"), config)
    with pytest.raises(ValueError, match="shard_size"):
        classify(str(tmp_path / "imgs"), model_dir, str(tmp_path / "out"), ClassifyConfig())
    stray = tmp_path / "stray"
    stray.mkdir()
    (stray / "part-000000.parquet").write_bytes(b"")
    with pytest.raises(ValueError, match="no _manifest.json"):
        classify(str(tmp_path / "imgs"), model_dir, str(stray), config)


# End to end on the session's local Ray.


def test_folder_with_captioner(ray_local, tmp_path, model_dir, captioner):
    import duckdb

    write_images(tmp_path / "imgs", 12)
    config = ClassifyConfig(
        captioner=captioner, caption_prompt="a photo of", max_new_tokens=4,
        caption_image_size=32, shard_size=5, batch_size=4, caption_batch_size=4,
    )  # fmt: skip
    out = tmp_path / "out"
    summary = classify_(tmp_path / "imgs", model_dir, out, config)
    assert summary["rows"] == summary["ok"] == 12 and summary["shards_done"] == 3
    assert 0 < summary["first_rows_s"] < summary["seconds"]
    assert sorted(p.name for p in out.glob("part-*")) == [
        f"part-00000{i}.parquet" for i in range(3)
    ]
    table = read_output(out)
    check_rows(table, "path")
    assert all(c and isinstance(c, str) for c in table.column("caption").to_pylist())
    assert set(table.column("model").to_pylist()) == {model_dir}
    frame = pq.read_table(out).to_pandas()
    assert len(frame) == 12 and frame["path"].is_unique
    count = (
        duckdb.connect()
        .execute(f"SELECT count(*), count(caption) FROM '{out}/*.parquet'")
        .fetchone()
    )
    assert count == (12, 12)
    assert json.loads((out / MANIFEST).read_text())["complete"] is True


def classify_(input: Path | str, model_dir: str, out: Path, config: ClassifyConfig, **kw) -> dict:
    from raycls.bulk.pipeline import classify

    return classify(str(input), model_dir, str(out), config, **kw)


def test_parquet_with_ids_and_alt_text(ray_local, tmp_path, model_dir, captioner):
    texts = ["a red cat", None, "", "a dog", None, "a bird"]
    table = pa.table(
        {
            "uid": pa.array([10, 11, 12, 13, 14, 15], pa.int64()),
            "jpeg": [image_bytes(i) for i in range(5)] + [b"broken"],
            "alt": texts,
        }
    )
    pq.write_table(table, tmp_path / "in.parquet", row_group_size=2)
    config = ClassifyConfig(
        captioner=captioner, caption_image_size=32, max_new_tokens=3, text_column="alt",
        id_column="uid", image_column="jpeg", shard_size=4, top_k=2,
    )  # fmt: skip
    summary = classify_(tmp_path / "in.parquet", model_dir, tmp_path / "out", config)
    assert (summary["ok"], summary["error"], summary["shards"]) == (5, 1, 2)
    rows = {r["id"]: r for r in read_output(tmp_path / "out").to_pylist()}
    assert sorted(rows) == [str(i) for i in range(10, 16)]
    # Captions only where the input had no text, and only for decodable images.
    assert [rows[str(i)]["caption"] is None for i in range(10, 16)] == [
        True, False, False, True, False, True,
    ]  # fmt: skip
    assert rows["15"]["status"] == "error" and "not an image" in rows["15"]["error"]
    assert all(len(r["top_k_labels"]) == 2 for r in rows.values() if r["status"] == "ok")


def test_big_shards_are_read_in_slices_by_both_actors(ray_local, tmp_path, model_dir):
    """Shards of 11 files in read tasks of 4 rows, shared by two actors: one file per shard,
    every input once, in order; a zero-byte file among them is an error row."""
    paths = write_images(tmp_path / "imgs", 21)
    paths[13].write_bytes(b"")
    config = ClassifyConfig(shard_size=11, batch_size=1, classify_actors=2,
                            cpus_per_classify_actor=0.5)  # fmt: skip
    summary = classify_(tmp_path / "imgs", model_dir, tmp_path / "out", config)
    assert summary["shards"] == 2 and summary["rows"] == 21 and summary["error"] == 1
    files = sorted((tmp_path / "out").glob("part-*.parquet"))
    assert [pq.read_metadata(f).num_rows for f in files] == [11, 10]
    table = read_output(tmp_path / "out")
    check_rows(table, "path")
    assert table.column("path").to_pylist() == [str(p) for p in paths]


def test_tar_input(ray_local, tmp_path, model_dir):
    shard = tmp_path / "tars" / "shard-000.tar"
    shard.parent.mkdir()
    with tarfile.open(shard, "w") as tar:
        members = {f"s{i}.jpg": image_bytes(i) for i in range(5)}
        members.update({"s1.txt": b"a cat", "s9.json": b"{}", "s3.jpg": b""})
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    config = ClassifyConfig(text_column="txt", shard_size=3)
    summary = classify_(shard.parent, model_dir, tmp_path / "out", config)
    table = read_output(tmp_path / "out")
    check_rows(table, "path")
    status = {r["path"].rsplit("#", 1)[1]: r["status"] for r in table.to_pylist()}
    assert status == {"s0": "ok", "s1": "ok", "s2": "ok", "s3": "error", "s4": "ok", "s9": "error"}
    assert summary["total_rows"] == 6


def test_txt_list_through_the_cli(ray_local, tmp_path, model_dir):
    images = write_images(tmp_path / "imgs", 5)
    listing = tmp_path / "list.txt"
    listing.write_text("\n".join([*map(str, images), str(tmp_path / "missing.jpg")]) + "\n")
    out = tmp_path / "out"
    args = ["classify", str(listing), "--model", model_dir, "--out", str(out), "--top-k", "1",
            "--shard-size", "4", "--captioner", "none", "classify.batch_size=2"]  # fmt: skip
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    # Log lines from Ray may follow the summary on the same captured stream.
    summary, _ = json.JSONDecoder().raw_decode("\n".join(lines[lines.index("{") :]))
    assert (summary["ok"], summary["error"], summary["shards"]) == (5, 1, 2)
    rows = read_output(out).to_pylist()
    assert [r["path"] for r in rows] == [*map(str, images), str(tmp_path / "missing.jpg")]
    assert "cannot read" in rows[-1]["error"] and all(len(r["top_k_labels"]) == 1 for r in rows[:5])
    again = CliRunner().invoke(cli, [*args, "classify.top_k=2"])
    assert again.exit_code != 0 and "top_k" in again.output


def test_a_model_whose_actors_cannot_start_ends_in_one_error(ray_local, tmp_path, model_dir):
    """Weights cut short fail on the driver, before any actor; weights of another architecture
    pass that check and fail in every actor: one error line names the cause. (From a shell,
    where the command starts its own Ray, that line comes last: the CLI stops its Ray before
    printing it, so the actors' log lines come first.)"""
    import shutil

    import ray
    from safetensors.numpy import save_file

    write_images(tmp_path / "imgs", 3)
    bad = tmp_path / "bad"
    shutil.copytree(model_dir, bad)
    weights = bad / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    args = ["classify", str(tmp_path / "imgs"), "--model", str(bad), "--captioner", "none"]
    cut = CliRunner().invoke(cli, [*args, "--out", str(tmp_path / "o1")])
    assert cut.exit_code == 1
    assert "Error: cannot read" in cut.output and "(the model's weights)" in cut.output
    save_file({"foo": np.zeros(3, np.float32)}, str(weights))
    other = CliRunner().invoke(cli, [*args, "--out", str(tmp_path / "o2")])
    assert other.exit_code == 1
    (line,) = [x for x in other.output.splitlines() if x.startswith("Error: ")]
    assert line.startswith("Error: the classification actors could not start: ValueError: ")
    assert "does not match the architecture in config.json" in line
    assert ray.is_initialized()  # the session's Ray, which the command did not start, runs on
