"""Array transforms for flow training batches (numpy, NHWC, deterministic given a Generator)."""

from __future__ import annotations

import numpy as np

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "normalize_imagenet", "log_confidence",
           "random_crop_batch"]

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)


def normalize_imagenet(images):
    """[..., 3] images in [0, 1] (float) or uint8 -> ImageNet mean/std normalised float32."""
    images = np.asarray(images)
    if images.shape[-1] != 3:
        raise ValueError(f"images: expected a trailing axis of 3 channels, got {images.shape}")
    if images.dtype == np.uint8:
        images = images.astype(np.float32) / 255.0
    return (images.astype(np.float32) - IMAGENET_MEAN) / IMAGENET_STD


def log_confidence(confidence):
    """``log(max(p, 1e-20))`` of [..., L] confidences (the refinement nets' probability input)."""
    return np.log(np.maximum(np.asarray(confidence, np.float32), 1e-20))


def random_crop_batch(arrays: dict, rng: np.random.Generator, *, batch_size: int,
                      crop: tuple[int, int], flip: bool = True) -> dict:
    """Draw ``batch_size`` random examples and random ``crop`` windows from stacked arrays.

    Args:
      arrays: dict of [N, H, W, ...] arrays of equal N, H, W. Keys ``flow`` and ``estimate``
        are flow fields: a horizontal flip negates their u component.
      rng: the generator; the same generator state gives the same batch.
      batch_size: B. crop: (h, w) <= (H, W).
      flip: random horizontal flips.

    Returns:
      dict of [B, h, w, ...] arrays.
    """
    first = next(iter(arrays.values()))
    n, height, width = first.shape[:3]
    ch, cw = crop
    if ch > height or cw > width:
        raise ValueError(f"crop {crop} is larger than the images ({height}, {width})")
    idx = rng.integers(0, n, batch_size)
    ys = rng.integers(0, height - ch + 1, batch_size)
    xs = rng.integers(0, width - cw + 1, batch_size)
    flips = rng.uniform(size=batch_size) < 0.5 if flip else np.zeros(batch_size, bool)
    out = {}
    for key, a in arrays.items():
        rows = []
        for i, y, x, f in zip(idx, ys, xs, flips):
            win = a[i, y:y + ch, x:x + cw]
            if f:
                win = win[:, ::-1]
                if key in ("flow", "estimate"):
                    win = win * np.array([-1, 1], win.dtype)
            rows.append(win)
        out[key] = np.stack(rows)
    return out
