"""Unit tests for raycls.io.images: every bad or unusual input is built here, in memory."""

from __future__ import annotations

import io
import warnings

import numpy as np
import pytest
from PIL import Image

from raycls.io.images import (
    IMAGE_EXTENSIONS,
    IMAGENET_MEAN,
    IMAGENET_STD,
    ImageDecodeError,
    decode_batch,
    decode_image,
    preprocess,
)


def encode(im: Image.Image, fmt: str = "PNG", **kwargs) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def rgb_image(w: int = 40, h: int = 30, colour=(200, 30, 30)) -> Image.Image:
    return Image.new("RGB", (w, h), colour)


def test_extensions_lowercase_with_dot():
    assert ".jpg" in IMAGE_EXTENSIONS and ".tiff" in IMAGE_EXTENSIONS
    assert all(e.startswith(".") and e == e.lower() for e in IMAGE_EXTENSIONS)


@pytest.mark.parametrize("data", [None, b""])
def test_empty(data):
    with pytest.raises(ImageDecodeError, match="empty file"):
        decode_image(data)


def test_text_file_named_jpg():
    with pytest.raises(ImageDecodeError, match="not an image: cannot identify format"):
        decode_image(b"hello, I am a text file pretending to be a .jpg\n")


def test_truncated_jpeg():
    rng = np.random.default_rng(0)
    noisy = Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8))
    data = encode(noisy, "JPEG", quality=90)
    with pytest.raises(ImageDecodeError, match="truncated or corrupt"):
        decode_image(data[: len(data) // 2])


def test_corrupt_png_body():
    data = bytearray(encode(rgb_image(), "PNG"))
    data[60:80] = b"\xff" * 20  # inside the IDAT chunk
    with pytest.raises(ImageDecodeError, match="corrupt"):
        decode_image(bytes(data))


def test_cmyk_jpeg():
    im = Image.new("CMYK", (20, 10), (0, 255, 255, 0))  # red in CMYK
    out = decode_image(encode(im, "JPEG", quality=95))
    assert out.mode == "RGB" and out.size == (20, 10)
    r, g, b = out.getpixel((10, 5))
    assert r > 200 and g < 60 and b < 60


def test_16bit_png_is_rescaled():
    a = np.full((8, 12), 65535, dtype=np.uint16)
    a[:, :6] = 0x8000
    data = encode(Image.fromarray(a), "PNG")
    out = decode_image(data)
    assert out.mode == "RGB" and out.size == (12, 8)
    assert out.getpixel((10, 4)) == (255, 255, 255)
    assert 120 <= out.getpixel((2, 4))[0] <= 135


def test_mode_i_with_8bit_values_kept():
    im = Image.fromarray(np.full((4, 4), 100, dtype=np.int32), mode="I")
    assert decode_image(encode(im, "TIFF")).getpixel((0, 0)) == (100, 100, 100)


def test_palette_with_transparency_on_white():
    im = Image.new("P", (10, 10), 0)
    im.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    im.putpixel((5, 5), 1)
    im.info["transparency"] = 0
    out = decode_image(encode(im, "PNG", transparency=0))
    assert out.getpixel((0, 0)) == (255, 255, 255)
    assert out.getpixel((5, 5)) == (255, 0, 0)


@pytest.mark.parametrize("mode", ["RGBA", "LA"])
def test_alpha_composited_on_white(mode):
    im = Image.new(mode, (10, 10), (0, 0) if mode == "LA" else (0, 0, 0, 0))
    im.putpixel((3, 3), (0, 255) if mode == "LA" else (0, 0, 255, 255))
    out = decode_image(encode(im, "PNG"))
    assert out.mode == "RGB"
    assert out.getpixel((0, 0)) == (255, 255, 255)
    assert out.getpixel((3, 3)) == ((0, 0, 0) if mode == "LA" else (0, 0, 255))


@pytest.mark.parametrize("mode", ["L", "1"])
def test_grayscale_and_bilevel(mode):
    im = Image.new(mode, (6, 4), 255 if mode == "L" else 1)
    out = decode_image(encode(im, "PNG"))
    assert out.mode == "RGB" and out.getpixel((0, 0)) == (255, 255, 255)


def test_exif_orientation_makes_upright():
    # Stored 40 wide x 20 high with a red marker top-left; orientation 6 means "rotate 90 CW
    # to view", so the upright image is 20 wide x 40 high with the marker top-right.
    im = Image.new("RGB", (40, 20), (255, 255, 255))
    im.paste((255, 0, 0), (0, 0, 8, 8))
    exif = Image.Exif()
    exif[0x0112] = 6
    out = decode_image(encode(im, "JPEG", quality=95, exif=exif.tobytes()))
    assert out.size == (20, 40)
    r, g, _ = out.getpixel((16, 3))
    assert r > 200 and g < 60
    assert out.getpixel((3, 36)) == pytest.approx((255, 255, 255), abs=10)


def test_animated_gif_first_frame():
    frames = [Image.new("RGB", (8, 8), c) for c in [(255, 0, 0), (0, 0, 255)]]
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=50)
    assert Image.open(io.BytesIO(data)).n_frames == 2
    r, g, b = decode_image(data).getpixel((4, 4))
    assert r > 200 and b < 60


def test_bomb_refused_from_header_without_pillow_warning():
    data = encode(Image.new("L", (3000, 3000)), "PNG")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(ImageDecodeError, match=r"9,000,000 pixels.*1,000,000.*max_pixels"):
            decode_image(data, max_pixels=1_000_000)


def test_our_limit_beats_pillows():
    # Over twice Pillow's own limit (an error in Pillow), but allowed by ours.
    old = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = 100
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            assert decode_image(encode(rgb_image(30, 30)), max_pixels=10_000).size == (30, 30)
        assert Image.MAX_IMAGE_PIXELS == 100
    finally:
        Image.MAX_IMAGE_PIXELS = old


def test_jpeg_draft_keeps_min_size():
    out = decode_image(encode(rgb_image(800, 600), "JPEG"), min_size=64)
    assert min(out.size) >= 64 and out.size[0] < 800


def test_preprocess_eval_centre_crop_and_normalisation():
    im = Image.new("RGB", (60, 30), (255, 255, 255))
    im.paste((0, 0, 0), (0, 0, 10, 30))  # a black strip the centre crop (15..45) drops
    x = preprocess(im, 16)
    assert x.shape == (3, 16, 16) and x.dtype == np.float32
    white = (1.0 - IMAGENET_MEAN) / IMAGENET_STD
    np.testing.assert_allclose(x[:, 8, 0], white, rtol=1e-5)


def test_preprocess_train_is_random_but_seedable():
    rng = np.random.default_rng(0)
    im = Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8))
    a = preprocess(im, 32, train=True, rng=np.random.default_rng(1))
    b = preprocess(im, 32, train=True, rng=np.random.default_rng(1))
    c = preprocess(im, 32, train=True, rng=np.random.default_rng(2))
    assert a.shape == (3, 32, 32)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_decode_batch_mixes_good_and_bad_rows():
    good = encode(rgb_image(), "PNG")
    batch = {
        "key": np.array(["a", "b", "c", "d"], dtype=object),
        "image": np.array([good, None, b"not an image", good], dtype=object),
        "error": np.array([None, None, None, "cannot read d: missing"], dtype=object),
        "label": np.array(["x", "y", "z", "w"], dtype=object),
    }
    out = decode_batch(batch, size=16, max_pixels=10_000)
    assert "image" not in out
    assert out["pixels"].shape == (4, 3, 16, 16) and out["pixels"].dtype == np.float32
    assert list(out["status"]) == ["ok", "error", "error", "error"]
    assert out["error"][0] is None
    assert "empty file" in out["error"][1]
    assert "not an image" in out["error"][2]
    assert out["error"][3] == "cannot read d: missing"
    assert not out["pixels"][1:].any() and out["pixels"][0].any()
    assert list(out["label"]) == ["x", "y", "z", "w"]


def test_decode_batch_train_seeded_and_lists_accepted():
    rng = np.random.default_rng(0)
    data = encode(Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)), "PNG")
    batch = {"image": [data, data], "key": ["k1", "k2"]}
    a = decode_batch(batch, size=24, max_pixels=10_000, train=True, seed=3)
    b = decode_batch(batch, size=24, max_pixels=10_000, train=True, seed=3)
    np.testing.assert_array_equal(a["pixels"], b["pixels"])
    assert list(a["status"]) == ["ok", "ok"]


def test_decode_batch_empty():
    out = decode_batch({"image": np.array([], dtype=object)}, size=8)
    assert out["pixels"].shape == (0, 3, 8, 8) and len(out["status"]) == 0
