"""Bytes -> checked, upright RGB image -> normalised float32 array. Pure functions, no Ray.

`decode_batch` is the Ray Data batch transform (numpy batch format): tests call it directly and
`Dataset.map_batches(decode_batch, fn_kwargs=...)` runs it. A bad image never raises there; it
becomes a row with `status="error"` and a message in `error`.
"""

from __future__ import annotations

import io
import logging
import threading
import zlib
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from raycls.config import DEFAULT_MAX_PIXELS

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff")
# Pillow can open more formats, but some (EPS) run external programs on untrusted input.
PILLOW_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF")
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)
# (pixel / 255 - mean) / std as pixel * _SCALE + _SHIFT.
_SCALE = (1.0 / (255.0 * IMAGENET_STD)).astype(np.float32)
_SHIFT = (-IMAGENET_MEAN / IMAGENET_STD).astype(np.float32)
TRAIN_CROP_SCALE = (0.7, 1.0)
TRAIN_CROP_RATIO = (3 / 4, 4 / 3)


class ImageDecodeError(ValueError):
    """An input that cannot become an image; the message says why."""


_limit_lock = threading.Lock()
_limit_users = 0
_saved_limit: int | None = None


@contextmanager
def _pillow_limit_off() -> Iterator[None]:
    """Switch off Pillow's global decompression-bomb limit; `max_pixels` is checked instead.

    Pillow's limit would reject (or warn about) images a user allowed with a higher `max_pixels`.
    Reference-counted so that concurrent decodes in threads restore it only when all are done.
    """
    global _limit_users, _saved_limit
    with _limit_lock:
        if _limit_users == 0:
            _saved_limit = Image.MAX_IMAGE_PIXELS
            Image.MAX_IMAGE_PIXELS = None
        _limit_users += 1
    try:
        yield
    finally:
        with _limit_lock:
            _limit_users -= 1
            if _limit_users == 0:
                Image.MAX_IMAGE_PIXELS = _saved_limit


def decode_image(
    data: bytes | None, max_pixels: int = DEFAULT_MAX_PIXELS, min_size: int | None = None
) -> Image.Image:
    """Decode bytes into an upright RGB image (first frame of animations, alpha on white).

    Args:
        max_pixels: images with more pixels are refused from their header, before decoding.
        min_size: lets JPEG decode at a reduced scale while both sides stay >= min_size.

    Raises:
        ImageDecodeError: empty, not an image, too large, truncated or corrupt.
    """
    if not data:
        raise ImageDecodeError("empty file (0 bytes)")
    with _pillow_limit_off():
        try:
            im = Image.open(io.BytesIO(data), formats=PILLOW_FORMATS)
        except UnidentifiedImageError:
            raise ImageDecodeError(
                f"not an image: cannot identify format ({len(data)} bytes; "
                f"supported: {', '.join(PILLOW_FORMATS)})"
            ) from None
        except Exception as e:
            raise ImageDecodeError(f"corrupt image header: {type(e).__name__}: {e}") from None
        width, height = im.size
        if width * height > max_pixels:
            raise ImageDecodeError(
                f"image is {width}x{height} = {width * height:,} pixels, over the limit of "
                f"{max_pixels:,} (a guard against decompression bombs); if such images are "
                "expected, raise `max_pixels` in the config "
                "(data.max_pixels or classify.max_pixels)"
            )
        if width < 1 or height < 1:
            raise ImageDecodeError(f"image has no pixels ({width}x{height})")
        if min_size and im.format == "JPEG":
            im.draft(None, (min_size, min_size))
        try:
            im.load()  # a full decode: truncation only shows here
        except Exception as e:
            raise ImageDecodeError(
                f"truncated or corrupt {im.format} image: {type(e).__name__}: {e}"
            ) from None
        try:
            im = ImageOps.exif_transpose(im)
        except Exception as e:
            # A broken EXIF block should not cost the pixels; the image stays as stored.
            logger.debug("ignoring unreadable EXIF orientation: %s", e)
        return to_rgb(im)


def to_rgb(im: Image.Image) -> Image.Image:
    """Any Pillow mode -> RGB: alpha composited on white, 16-bit and float rescaled to 8-bit."""
    if im.mode == "RGB":
        return im
    if im.mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
    elif im.mode in ("1", "CMYK", "YCbCr", "LAB", "HSV", "RGBX", "L"):
        im = im.convert("RGB")
    elif im.mode.startswith("I") or im.mode == "F":
        im = Image.fromarray(_to_uint8(np.asarray(im), im.mode)).convert("RGB")
    if im.mode in ("LA", "La", "PA", "RGBa", "RGBA"):
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        im = Image.alpha_composite(white, rgba).convert("RGB")
    if im.mode != "RGB":
        im = im.convert("RGB")
    return im


def _to_uint8(a: np.ndarray, mode: str) -> np.ndarray:
    a = a.astype(np.float64)
    if mode == "F":
        scale = 255.0 if a.size and np.nanmax(a) <= 1.0 else 1.0
    elif mode.startswith("I;16") or (a.size and a.max() > 255):
        # Mode "I" from 16-bit PNG/TIFF holds 0..65535; 8-bit data stored as "I" stays as is.
        scale = 255.0 / 65535.0
    else:
        scale = 1.0
    return np.clip(np.nan_to_num(a * scale), 0, 255).astype(np.uint8)


def preprocess(
    img: Image.Image,
    size: int,
    train: bool = False,
    rng: np.random.Generator | None = None,
    flip: bool = True,
) -> np.ndarray:
    """RGB image -> float32 [3, size, size] normalised with ImageNet mean/std.

    Eval resizes the shorter side to `size` and centre-crops (no distortion; very wide images
    lose their edges). Train takes a random crop of 70-100% of the area at a 3:4-4:3 aspect
    ratio and flips horizontally half the time (`flip=False` for orientation-sensitive classes
    such as digits). No colour jitter: colour can be what tells classes apart.
    """
    width, height = img.size
    if train:
        rng = rng if rng is not None else np.random.default_rng()
        box = _random_crop_box(width, height, rng)
        out = img.resize((size, size), Image.Resampling.BILINEAR, box=box)
        if flip and rng.random() < 0.5:
            out = out.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    else:
        scale = size / min(width, height)
        crop_w, crop_h = size / scale, size / scale
        left, top = (width - crop_w) / 2, (height - crop_h) / 2
        out = img.resize(
            (size, size), Image.Resampling.BILINEAR, box=(left, top, left + crop_w, top + crop_h)
        )
    # One fused multiply-add per channel plane straight from uint8, instead of float
    # conversion, scaling, normalising and transposing as separate whole-array passes.
    rgb = np.asarray(out)
    arr = np.empty((3, size, size), dtype=np.float32)
    for c in range(3):
        np.multiply(rgb[:, :, c], _SCALE[c], out=arr[c])
        arr[c] += _SHIFT[c]
    return arr


def _random_crop_box(
    width: int, height: int, rng: np.random.Generator
) -> tuple[float, float, float, float]:
    area = width * height
    for _ in range(10):
        target = area * rng.uniform(*TRAIN_CROP_SCALE)
        ratio = np.exp(rng.uniform(np.log(TRAIN_CROP_RATIO[0]), np.log(TRAIN_CROP_RATIO[1])))
        w, h = np.sqrt(target * ratio), np.sqrt(target / ratio)
        if w <= width and h <= height:
            left, top = rng.uniform(0, width - w), rng.uniform(0, height - h)
            return (left, top, left + w, top + h)
    side = min(width, height)  # fall back to the centre square
    left, top = (width - side) / 2, (height - side) / 2
    return (left, top, left + side, top + side)


def decode_each(
    images: Sequence[Any],
    prior: Sequence[Any] | None,
    use: Callable[[int, Image.Image], None],
    *,
    max_pixels: int,
    min_size: int | Sequence[int | None] | None = None,
) -> list[str | None]:
    """Decode each row's bytes and pass the image to `use(row, image)`; returns each row's
    error, or None. A read error already in `prior` passes through, and whatever decoding or
    `use` raises becomes that row's message: one bad image never stops a batch.

    `min_size` (one for all rows, or one per row) lets JPEGs decode at a reduced scale.
    """
    errors: list[str | None] = [None] * len(images)
    for i, data in enumerate(images):
        if prior is not None and isinstance(prior[i], str) and prior[i]:  # NaN: all-null column
            errors[i] = prior[i]
            continue
        size = min_size if min_size is None or isinstance(min_size, int) else min_size[i]
        try:
            use(i, decode_image(None if data is None else bytes(data), max_pixels, size))
        except ImageDecodeError as e:
            errors[i] = str(e)
        except Exception as e:  # a per-row failure must not stop a bulk job
            errors[i] = f"cannot decode image: {type(e).__name__}: {e}"
    return errors


def decode_batch(
    batch: dict[str, Any],
    *,
    size: int,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    train: bool = False,
    seed: int | None = None,
    flip: bool = True,
) -> dict[str, Any]:
    """Ray Data transform: `image` bytes -> `pixels` [N, 3, size, size], `status`, `error`.

    Rows that already carry an `error` (from reading) or fail to decode get zero pixels,
    `status="error"` and the message; other columns pass through and `image` is dropped.
    `seed` makes train augmentation reproducible (mixed with the batch's keys, so batches
    differ); change it per epoch for fresh crops. None draws fresh randomness.
    """
    pixels = np.zeros((len(batch["image"]), 3, size, size), dtype=np.float32)
    rng = np.random.default_rng(None if seed is None else [seed, _batch_fingerprint(batch)])

    def use(i: int, img: Image.Image) -> None:
        pixels[i] = preprocess(img, size, train=train, rng=rng, flip=flip)

    errors = decode_each(
        batch["image"], batch.get("error"), use, max_pixels=max_pixels,
        min_size=round(size * 1.25) if train else size,
    )  # fmt: skip
    return with_pixels(batch, pixels, errors)


def with_pixels(
    batch: dict[str, Any], pixels: np.ndarray, errors: list[str | None]
) -> dict[str, Any]:
    """The batch without its image bytes, plus `pixels`, `error` and `status` per row."""
    out = {k: v for k, v in batch.items() if k != "image"}
    out["pixels"] = pixels
    out["error"] = np.array(errors, dtype=object)
    out["status"] = np.array(["ok" if e is None else "error" for e in errors], dtype=object)
    return out


def _batch_fingerprint(batch: dict[str, Any]) -> int:
    keys = batch.get("key")
    if keys is not None:
        return zlib.crc32("\n".join(str(k) for k in keys).encode())
    crc = 0
    for data in batch["image"]:
        crc = zlib.crc32(bytes(data or b"")[:4096], crc)
    return crc
