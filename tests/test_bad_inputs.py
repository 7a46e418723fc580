"""Every kind of bad (and odd but valid) image: each appears once, none stops the job."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from helpers import check_rows, image_bytes, make_model, read_output
from PIL import Image

from raycls.config import ClassifyConfig

MAX_PIXELS = 100 * 100


def _save(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def _noise(mode: str = "RGB", size: tuple[int, int] = (48, 40)) -> Image.Image:
    rng = np.random.default_rng(len(mode))
    return Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).convert(
        mode
    )


def _exif_rotated() -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    return _save(_noise(size=(60, 30)), "JPEG", exif=exif)


def _animated_gif() -> bytes:
    frames = [_noise().convert("P") for _ in range(3)]
    return _save(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=50)


def _corrupt_png() -> bytes:
    data = bytearray(_save(_noise(size=(64, 64)), "PNG"))
    start = data.index(b"IDAT") + 20
    data[start : start + 40] = bytes(40)  # zeroed compressed data: the CRC check fails
    return bytes(data)


def corpus() -> dict[str, tuple[bytes, str | None]]:
    """name -> (bytes, None when the image must be classified, else a word of its error)."""
    jpeg = _save(_noise(size=(96, 96)), "JPEG")
    return {
        "good1.jpg": (image_bytes(1), None),
        "good2.png": (image_bytes(2, fmt="PNG"), None),
        "cmyk.jpg": (_save(_noise("CMYK"), "JPEG"), None),
        "sixteen_bit.png": (
            _save(Image.fromarray(np.full((30, 40), 40000, np.uint16)), "PNG"),
            None,
        ),
        "palette.png": (_save(_noise("P"), "PNG"), None),
        "alpha.png": (_save(_noise("RGBA"), "PNG"), None),
        "grayscale.jpg": (_save(_noise("L"), "JPEG"), None),
        "exif_rotated.jpg": (_exif_rotated(), None),
        "animated.gif": (_animated_gif(), None),
        "truncated.jpg": (jpeg[: len(jpeg) // 2], "truncated"),
        "corrupt.png": (_corrupt_png(), "corrupt"),
        "garbage.jpg": (b"\xff\xd8\xff\xe0" + bytes(range(256)) * 4, "image"),
        "empty.jpg": (b"", "empty"),
        "text_file.jpg": (b"this is a text file, not a picture\n", "not an image"),
        "huge.png": (_save(_noise(size=(200, 200)), "PNG"), "over the limit"),
    }


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> str:
    return make_model(tmp_path_factory.mktemp("model"))


def test_bad_inputs_become_error_rows(ray_local, tmp_path: Path, model_dir: str):
    import duckdb

    from raycls.bulk.pipeline import classify

    files = corpus()
    folder = tmp_path / "imgs"
    folder.mkdir()
    for name, (data, _) in files.items():
        (folder / name).write_bytes(data)
    config = ClassifyConfig(shard_size=4, batch_size=4, max_pixels=MAX_PIXELS)
    summary = classify(str(folder), model_dir, str(tmp_path / "out"), config)

    expected_errors = {name: word for name, (_, word) in files.items() if word}
    assert summary["rows"] == len(files) == summary["total_rows"]
    assert (summary["ok"], summary["error"]) == (
        len(files) - len(expected_errors),
        len(expected_errors),
    )
    table = read_output(tmp_path / "out")
    check_rows(table, "path")
    rows = {Path(r["path"]).name: r for r in table.to_pylist()}
    assert sorted(rows) == sorted(files)
    for name, word in expected_errors.items():
        assert rows[name]["status"] == "error", name
        assert word in rows[name]["error"].lower(), (name, rows[name]["error"])
    # Readers: pyarrow (dataset), pandas, DuckDB.
    out = tmp_path / "out"
    assert pq.read_table(out).num_rows == len(files)
    frame = pq.read_table(out).to_pandas()
    assert frame.groupby("status").size().to_dict() == {
        "error": len(expected_errors),
        "ok": len(files) - len(expected_errors),
    }
    counts = (
        duckdb.connect()
        .execute(f"SELECT status, count(*) FROM '{out}/*.parquet' GROUP BY status ORDER BY 1")
        .fetchall()
    )
    assert counts == [("error", len(expected_errors)), ("ok", len(files) - len(expected_errors))]
