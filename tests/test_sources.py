"""Tests for raycls.io (inputs, labeled, shards, reading): planning and reading every input."""

from __future__ import annotations

import io
import json
import os
import tarfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from raycls.io.images import decode_batch
from raycls.io.inputs import plan_shards, shard_dataset
from raycls.io.labeled import load_labeled
from raycls.io.reading import ROW_SCHEMA, read_shard
from raycls.io.shards import Shard, split_shard


def png(colour=(255, 0, 0), size=(8, 8)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture
def folder(tmp_path) -> Path:
    """root/{cat,dog}/*.png plus distractions: metadata, a fake .JPG, hidden and text files."""
    root = tmp_path / "imgs"
    for label, n in (("cat", 3), ("dog", 2)):
        (root / label).mkdir(parents=True)
        for i in range(n):
            (root / label / f"{i}.png").write_bytes(png())
    (root / "dog" / "fake.JPG").write_bytes(b"not really an image")
    (root / "dog" / "notes.txt").write_text("ignore me")
    (root / "cat" / "._0.png").write_bytes(b"macOS resource fork")
    meta = pa.table({"path": ["cat/0.png", "dog/1.png"], "text": ["a cat", "a dog"]})
    pq.write_table(meta, root / "metadata.parquet")
    return root


def test_shard_round_trip():
    shard = Shard(3, "parquet", ("s3://b/x.parquet",), (0, 1), 20)
    assert Shard.from_dict(json.loads(json.dumps(shard.to_dict()))) == shard
    with pytest.raises(ValueError, match="kind 'zip'"):
        Shard(0, "zip", ("a",))


def test_folder_plan_and_read(folder):
    shards = plan_shards(str(folder), shard_size=4)
    assert [s.num_rows for s in shards] == [4, 2]
    paths = [p for s in shards for p in s.paths]
    assert paths == sorted(paths) and len(paths) == 6
    assert not any(p.endswith((".txt", ".parquet", "._0.png")) for p in paths)
    assert plan_shards(str(folder), shard_size=4) == shards
    table = pa.concat_tables(read_shard(s.to_dict(), labeled_root=str(folder)) for s in shards)
    assert table.schema == ROW_SCHEMA
    rows = {os.path.relpath(r["key"], folder): r for r in table.to_pylist()}
    assert rows["cat/0.png"]["text"] == "a cat" and rows["dog/0.png"]["text"] is None
    assert rows["dog/1.png"]["label"] == "dog" and rows["cat/2.png"]["image"] == png()
    assert rows["dog/fake.JPG"]["image"] == b"not really an image"  # decode flags it later
    assert table.column("shard").to_pylist() == [0] * 4 + [1] * 2


def test_split_shard_into_read_tasks():
    files = Shard(2, "files", tuple(f"/d/{i}.jpg" for i in range(5)), num_rows=5,
                  texts=("a", None, "b", None, "c"))  # fmt: skip
    tasks = split_shard(files, 2)
    assert [(t["start"], t["shard_rows"], t["num_rows"]) for t in tasks] == [
        (0, 5, 2), (2, 5, 2), (4, 5, 1)]  # fmt: skip
    assert [p for t in tasks for p in t["paths"]] == list(files.paths)
    assert [x for t in tasks for x in t["texts"]] == list(files.texts)
    assert {Shard.from_dict(t).index for t in tasks} == {2}
    tar = Shard(0, "tar", ("/d/a.tar",))
    assert split_shard(tar, 2) == [{**tar.to_dict(), "start": 0, "shard_rows": None}]
    assert len(split_shard(files, 5)) == 1


def test_parquet_shards_split_into_read_tasks_of_whole_row_groups(tmp_path):
    from raycls.bulk.read import read_shards

    table = pa.table({"image": [png((i, 0, 0)) for i in range(16)]})
    pq.write_table(table, tmp_path / "x.parquet", row_group_size=3)  # 3,3,3,3,3,1 rows
    (shard,) = plan_shards(str(tmp_path / "x.parquet"), shard_size=100)
    assert shard.group_rows == (3, 3, 3, 3, 3, 1) and shard.num_rows == 16
    assert Shard.from_dict(shard.to_dict()) == shard
    tasks = split_shard(shard, 7)  # at most 7 rows each: two row groups, never a part of one
    assert [(t["row_groups"], t["start"], t["num_rows"], t["shard_rows"]) for t in tasks] == [
        ([0, 1], 0, 6, 16), ([2, 3], 6, 6, 16), ([4, 5], 12, 4, 16)]  # fmt: skip
    assert [t["row_groups"] for t in split_shard(shard, 2)] == [[g] for g in range(6)]
    rows = []
    for task in tasks:
        for out in read_shards(pa.table({"shard": [json.dumps(task)]}), image_column="image"):
            rows += zip(out.column("key").to_pylist(), out.column("row").to_pylist(),
                        out.column("shard_rows").to_pylist(), strict=True)  # fmt: skip
    uri = str(tmp_path / "x.parquet")
    assert rows == [(f"{uri}#{i}", i, 16) for i in range(16)]  # as one task reads the shard
    with pytest.raises(ValueError, match="2 row counts for 3 row groups"):
        Shard(0, "parquet", ("/x.parquet",), (0, 1, 2), 6, group_rows=(3, 3))


def test_missing_file_becomes_error_row(tmp_path):
    (tmp_path / "a.png").write_bytes(png())
    shard = Shard(0, "files", (str(tmp_path / "a.png"), str(tmp_path / "gone.png")))
    rows = read_shard(shard).to_pylist()
    assert rows[0]["error"] is None and rows[1]["image"] is None
    assert "gone.png" in rows[1]["error"]


def test_a_listed_pipe_or_device_becomes_an_error_row_without_blocking(tmp_path):
    os.mkfifo(tmp_path / "pipe.jpg")  # opening it would wait for a writer forever
    listed = tmp_path / "list.txt"
    listed.write_text(f"{tmp_path / 'pipe.jpg'}\n/dev/zero\n")
    rows = read_shard(plan_shards(str(listed))[0]).to_pylist()
    assert [r["image"] for r in rows] == [None, None]
    assert all("is not a regular file" in r["error"] for r in rows)


def test_txt_list(tmp_path, folder):
    listing = tmp_path / "list.txt"
    listing.write_text(f"# images\nimgs/cat/1.png\n\n{folder / 'dog/0.png'}\nimgs/missing.png\n")
    shards = plan_shards(str(listing))
    assert shards[0].paths == (
        str(folder / "cat/1.png"),
        str(folder / "dog/0.png"),
        str(folder / "missing.png"),
    )
    rows = read_shard(shards[0]).to_pylist()
    assert [r["error"] is None for r in rows] == [True, True, False]


def test_classify_output_folders_are_left_out_of_a_listing(tmp_path, caplog):
    pq.write_table(pa.table({"image": [png()] * 2}), tmp_path / "a.parquet")
    for out in (tmp_path / "out", tmp_path / "x" / "preds"):
        out.mkdir(parents=True)
        pq.write_table(pa.table({"label": ["a"]}), out / "part-000000.parquet")
        (out / "_manifest.json").write_text("{}")
    (tmp_path / "x" / "b.parquet").write_bytes((tmp_path / "a.parquet").read_bytes())
    shards = plan_shards(str(tmp_path))
    assert sorted(Path(s.paths[0]).relative_to(tmp_path) for s in shards) == [
        Path("a.parquet"),
        Path("x/b.parquet"),
    ]
    assert "leaving 2 classify output folder(s)" in caplog.text
    # a classify output named as the input itself is listed (and then refused by its columns)
    assert len(plan_shards(str(tmp_path / "out"))) == 1


def test_parquet_with_id_and_text(tmp_path):
    table = pa.table(
        {
            "id": [f"img{i}" for i in range(10)],
            "image": [png() if i != 3 else None for i in range(10)],
            "caption": [f"text {i}" for i in range(10)],
        }
    )
    pq.write_table(table, tmp_path / "part-0.parquet", row_group_size=3)
    pq.write_table(table.slice(0, 2), tmp_path / "part-1.parquet")
    shards = plan_shards(str(tmp_path), shard_size=6)
    assert [(Path(s.paths[0]).name, s.row_groups, s.num_rows) for s in shards] == [
        ("part-0.parquet", (0, 1), 6),
        ("part-0.parquet", (2, 3), 4),
        ("part-1.parquet", (0,), 2),
    ]
    rows = read_shard(shards[1], text_column="caption", id_column="id").to_pylist()
    assert [r["key"] for r in rows] == ["img6", "img7", "img8", "img9"]
    assert rows[0]["text"] == "text 6" and rows[0]["image"] == png()
    rows = read_shard(shards[0], text_column="nope").to_pylist()
    assert rows[4]["key"].endswith("part-0.parquet#4") and rows[4]["text"] is None
    assert rows[3]["image"] is None and rows[3]["error"] == "image is null"
    with pytest.raises(ValueError, match="no image column 'img'.*available columns"):
        read_shard(shards[0], image_column="img")


def test_parquet_image_structs_and_paths(tmp_path):
    (tmp_path / "a.png").write_bytes(png((0, 0, 255)))
    hf = pa.table({"image": [{"bytes": png(), "path": "x.png"}]})
    pq.write_table(hf, tmp_path / "hf.parquet")
    assert (
        read_shard(plan_shards(str(tmp_path / "hf.parquet"))[0]).column("image")[0].as_py() == png()
    )
    refs = pa.table({"image": ["a.png", "b.png"]})
    pq.write_table(refs, tmp_path / "refs.parquet")
    rows = read_shard(plan_shards(str(tmp_path / "refs.parquet"))[0]).to_pylist()
    assert rows[0]["image"] == png((0, 0, 255)) and "b.png" in rows[1]["error"]


def make_tar(path: Path, members: dict[str, bytes]) -> None:
    with tarfile.open(path, "w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def test_webdataset_tar(tmp_path):
    make_tar(
        tmp_path / "shard-000.tar",
        {
            "s/a.jpg": png(),
            "s/a.txt": b"caption a",
            "s/a.cls": b"cat",
            "s/b.png": png(),
            "s/b.json": json.dumps({"caption": "caption b", "label": "dog"}).encode(),
            "s/c.txt": b"no image here",
        },
    )
    make_tar(tmp_path / "shard-001.tar", {"d.seg.png": png()})
    shards = plan_shards(str(tmp_path))
    assert [(s.kind, Path(s.paths[0]).name, s.num_rows) for s in shards] == [
        ("tar", "shard-000.tar", None),
        ("tar", "shard-001.tar", None),
    ]
    rows = read_shard(shards[0], label_column="label").to_pylist()
    assert [r["key"].rsplit("#", 1)[1] for r in rows] == ["s/a", "s/b", "s/c"]
    assert [r["text"] for r in rows] == ["caption a", "caption b", "no image here"]
    assert [r["label"] for r in rows] == ["cat", "dog", None]
    assert rows[0]["image"] == png() and "no image member" in rows[2]["error"]
    assert read_shard(shards[1]).column("image")[0].as_py() == png()


def test_corrupt_tar_names_file(tmp_path):
    make_tar(tmp_path / "x.tar", {"a.png": png((1, 2, 3), (64, 64))})
    data = (tmp_path / "x.tar").read_bytes()
    (tmp_path / "x.tar").write_bytes(data[:700])
    with pytest.raises(ValueError, match="cannot read tar shard .*x.tar"):
        read_shard(plan_shards(str(tmp_path / "x.tar"))[0])


def test_load_labeled_folder(folder):
    shards, classes = load_labeled(str(folder))
    assert classes == ["cat", "dog"]
    (folder / "empty_class").mkdir()
    with pytest.raises(ValueError, match=r"\['empty_class'\].*add images or remove"):
        load_labeled(str(folder))
    (folder / "empty_class").rmdir()
    (folder / "loose.png").write_bytes(png())
    with pytest.raises(ValueError, match="directly in .*root/<class>/<image>"):
        load_labeled(str(folder))


def test_load_labeled_parquet(tmp_path):
    table = pa.table({"image": [png()] * 4, "y": [2, 10, 2, None], "text": ["a", None, "c", "d"]})
    pq.write_table(table, tmp_path / "train.parquet")
    shards, classes = load_labeled(str(tmp_path / "train.parquet"), label_column="y")
    assert classes == ["10", "2"]
    assert read_shard(shards[0], label_column="y").column("label").to_pylist() == [
        "2",
        "10",
        "2",
        None,
    ]
    with pytest.raises(ValueError, match=r"no label column 'label'.*\['image', 'y', 'text'\]"):
        load_labeled(str(tmp_path / "train.parquet"))


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda p: None, "does not exist; expected a folder of images"),
        (lambda p: p.mkdir(), "no input files found"),
        (lambda p: p.write_text("x"), "unknown extension"),
    ],
)
def test_bad_sources(tmp_path, make, message):
    target = tmp_path / "input.bin"
    make(target)
    with pytest.raises(ValueError, match=message):
        plan_shards(str(target))


def test_tar_not_labelled(tmp_path):
    make_tar(tmp_path / "a.tar", {"a.png": png()})
    with pytest.raises(ValueError, match="must be an image folder"):
        load_labeled(str(tmp_path))


def test_shard_dataset(ray_local, folder, tmp_path):
    shards, classes = load_labeled(str(folder), shard_size=2)
    ds = shard_dataset(shards, labeled_root=str(folder))
    rows = sorted(ds.take_all(), key=lambda r: r["key"])
    assert len(rows) == 6 and {r["label"] for r in rows} == set(classes)
    assert sorted({r["shard"] for r in rows}) == [0, 1, 2]
    decoded = ds.map_batches(
        decode_batch, fn_kwargs={"size": 8, "max_pixels": 10_000}, batch_format="numpy"
    )
    status = {
        os.path.basename(r["key"]): (r["status"], r["pixels"].shape) for r in decoded.take_all()
    }
    assert status["fake.JPG"][0] == "error" and status["0.png"] == ("ok", (3, 8, 8))
    pq.write_table(pa.table({"image": [png()] * 5}), tmp_path / "p.parquet", row_group_size=2)
    with pytest.raises(ValueError, match="has no id column 'id'.*id_column="):
        shard_dataset(plan_shards(str(tmp_path / "p.parquet")), id_column="id")
    assert shard_dataset(plan_shards(str(tmp_path / "p.parquet"), shard_size=2)).count() == 5


def test_file_uri(folder):
    uri = f"file://{folder}"
    shards = plan_shards(uri + "/")
    assert all(p.startswith(uri + "/") for s in shards for p in s.paths)
    rows = read_shard(shards[0], labeled_root=uri).to_pylist()
    assert rows[0]["key"] == f"{uri}/cat/0.png" and rows[0]["label"] == "cat"
    assert rows[0]["text"] == "a cat" and rows[0]["image"] == png()
    assert load_labeled(uri)[1] == ["cat", "dog"]


def test_small_inputs_are_spread_over_several_shards(tmp_path):
    """A small folder or Parquet input gets min_shards shards of >= 64 rows; a large one and a
    small shard_size keep theirs."""
    from raycls.io.inputs import MIN_SHARD_ROWS, spread_shard_size

    assert spread_shard_size(1000, 1000, 16) == MIN_SHARD_ROWS == 64
    assert spread_shard_size(20_000, 1000, 16) == 1000
    assert spread_shard_size(1000, 5, 16) == 5
    assert spread_shard_size(1000, 1000, 1) == 1000
    root = tmp_path / "imgs"
    root.mkdir()
    for i in range(300):
        (root / f"{i:03d}.jpg").write_bytes(b"x")
    assert [s.num_rows for s in plan_shards(str(root), 1000, min_shards=16)] == [64] * 4 + [44]
    assert [s.num_rows for s in plan_shards(str(root), 1000)] == [300]
    table = pa.table({"image": [b"x"] * 300})
    pq.write_table(table, tmp_path / "x.parquet", row_group_size=50)
    shards = plan_shards(str(tmp_path / "x.parquet"), 1000, min_shards=4)
    assert [s.num_rows for s in shards] == [50, 50, 50, 50, 50, 50]  # whole row groups of 50
    assert len(plan_shards(str(tmp_path / "x.parquet"), 1000)) == 1
