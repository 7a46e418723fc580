"""Training augmentation of decoded batches ([N, 3, S, S] float32, ImageNet-normalised, as
`raycls.io.images.decode_batch` makes them): shifts and flips, quarter turns, and RandAugment
for rows flagged for strong augmentation (data.strong_augment_column). No Ray import.
"""

from __future__ import annotations

import numpy as np

from raycls.io.images import IMAGENET_MEAN, IMAGENET_STD

# torchvision's RandAugment defaults: two ops per image at magnitude 9 of 30.
STRONG_OPS = 2
STRONG_MAGNITUDE = 9


def strong_augment(pixels: np.ndarray, flags: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """RandAugment (torchvision) on the rows where `flags` is true; other rows come back as
    they were. Its ops work on 0-255 images, so flagged rows are de-normalised and back."""
    flags = np.asarray(flags, dtype=bool)
    if not flags.any():
        return pixels
    import torch  # only for flagged rows: plain training never imports torch here
    from torchvision.transforms import v2

    mean, std = IMAGENET_MEAN[:, None, None], IMAGENET_STD[:, None, None]
    images = np.clip(np.rint((pixels[flags] * std + mean) * 255), 0, 255).astype(np.uint8)
    augment = v2.RandAugment(num_ops=STRONG_OPS, magnitude=STRONG_MAGNITUDE)
    # RandAugment draws from torch's global generator: seed it from `rng`, then restore it.
    # One small image is too little work to share: several torch threads only wait on each
    # other (Ray Data tasks run with one; a process with more borrows one meanwhile).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(rng.integers(2**63)))
            done = np.stack([augment(torch.from_numpy(image)).numpy() for image in images])
    finally:
        torch.set_num_threads(threads)
    out = pixels.copy()
    out[flags] = (done.astype(np.float32) / 255 - mean) / std
    return out


def rotate_by_quarters(pixels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Turn each [3, S, S] image by 0, 90, 180 or 270 degrees, drawn per image."""
    if not len(pixels):
        return pixels
    turns = rng.integers(0, 4, size=len(pixels))
    return np.stack([np.rot90(p, k, axes=(1, 2)) for p, k in zip(pixels, turns, strict=True)])


def shift_and_flip(
    pixels: np.ndarray, rng: np.random.Generator, flip: bool = True, shift: bool = True
) -> np.ndarray:
    """Move each [3, S, S] image by up to S/8 pixels each way (edges reflected) and flip half
    of them horizontally: the pad-and-crop augmentation of small-image recipes (CIFAR's 4 px
    at 32), which keeps every pixel's scale where a random-area crop would zoom in."""
    n, _, size, _ = pixels.shape
    pad = max(1, size // 8) if shift else 0
    padded = np.pad(pixels, ((0, 0), (0, 0), (pad, pad), (pad, pad)), mode="reflect")
    out = np.empty_like(pixels)
    dy, dx = rng.integers(0, 2 * pad + 1, size=(2, n))
    flips = rng.random(n) < 0.5 if flip else np.zeros(n, dtype=bool)
    for i in range(n):
        view = padded[i, :, dy[i] : dy[i] + size, dx[i] : dx[i] + size]
        out[i] = view[:, :, ::-1] if flips[i] else view
    return out
