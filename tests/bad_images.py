"""A corpus of bad (and odd but valid) images, built in memory, for tests of the bulk path."""

from __future__ import annotations

import io

import numpy as np
from helpers import image_bytes
from PIL import Image

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
