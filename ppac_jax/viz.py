"""Pictures: Middlebury flow colours, flow error maps, label colours, titled PNG panels.

All functions take and return NumPy arrays: colour images are `[H, W, 3]` uint8.
"""

from __future__ import annotations

import os
from typing import Optional, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from ppac_jax.data.io import voc_palette

__all__ = ["color_wheel", "flow_to_color", "flow_wheel_image", "error_map", "ERROR_BINS",
           "ERROR_COLORS", "label_to_color", "to_uint8_image", "save_panel"]

# Middlebury wheel segments: red-yellow, yellow-green, green-cyan, cyan-blue, blue-magenta,
# magenta-red (55 hues; sizes chosen by Baker et al. for perceptual uniformity).
_WHEEL_SEGMENTS = (15, 6, 4, 11, 13, 6)


def color_wheel() -> np.ndarray:
    """The 55 Middlebury hues `[55, 3]` float64 in [0, 255], starting at red, turning to yellow."""
    rows = []
    # For each segment: (channel held at 255, channel ramping, ramp direction up?).
    plan = ((0, 1, True), (1, 0, False), (1, 2, True), (2, 1, False), (2, 0, True), (0, 2, False))
    for size, (full, ramp, up) in zip(_WHEEL_SEGMENTS, plan, strict=True):
        segment = np.zeros((size, 3))
        segment[:, full] = 255
        steps = np.floor(255 * np.arange(size) / size)
        segment[:, ramp] = steps if up else 255 - steps
        rows.append(segment)
    return np.concatenate(rows)


def flow_to_color(flow, *, max_flow: Optional[float] = None, valid=None) -> np.ndarray:
    """Middlebury colour coding of flow: hue = direction, saturation = magnitude.

    Args:
      flow: `[H, W, 2]` flow (u = x, v = y).
      max_flow: magnitude shown fully saturated; default: the largest valid magnitude.
        Larger magnitudes are shown darkened (x0.75).
      valid: optional `[H, W]` bool; invalid and non-finite pixels are black.

    Returns:
      `[H, W, 3]` uint8.
    """
    flow = np.asarray(flow, np.float64)
    if flow.ndim != 3 or flow.shape[-1] != 2:
        raise ValueError(f"flow: expected shape [H, W, 2], got {flow.shape}")
    known = np.all(np.isfinite(flow), -1) & np.all(np.abs(flow) <= 1e9, -1)
    if valid is not None:
        valid = np.asarray(valid, bool)
        if valid.shape != flow.shape[:2]:
            raise ValueError(f"valid: expected shape {flow.shape[:2]}, got {valid.shape}")
        known &= valid
    u = np.where(known, flow[..., 0], 0.0)
    v = np.where(known, flow[..., 1], 0.0)
    radius = np.hypot(u, v)
    if max_flow is None:
        max_flow = radius.max() if known.any() else 1.0
    elif not max_flow > 0:
        raise ValueError(f"max_flow must be positive, got {max_flow}")
    scale = 1.0 / (max_flow + np.finfo(np.float64).eps)
    u, v, radius = u * scale, v * scale, radius * scale

    wheel = color_wheel() / 255.0
    n = len(wheel)
    angle = np.arctan2(-v, -u) / np.pi  # in [-1, 1]
    position = (angle + 1) / 2 * (n - 1)
    k0 = np.floor(position).astype(int)
    k1 = (k0 + 1) % n
    frac = (position - k0)[..., None]
    color = (1 - frac) * wheel[k0] + frac * wheel[k1]
    inside = (radius <= 1)[..., None]
    color = np.where(inside, 1 - radius[..., None] * (1 - color), color * 0.75)
    color = np.floor(255 * color)
    color[~known] = 0
    return color.astype(np.uint8)


def flow_wheel_image(size: int = 128) -> np.ndarray:
    """A legend: the colour of every flow vector of magnitude <= 1 on a `[size, size, 3]` disc."""
    coords = np.linspace(-1, 1, size)
    u, v = np.meshgrid(coords, coords)
    inside = np.hypot(u, v) <= 1
    image = flow_to_color(np.stack([u, v], -1), max_flow=1.0)
    image[~inside] = 255
    return image


# KITTI-style error colours (ColorBrewer RdYlBu, blue = small, red = large) over normalised
# error e = min(err / 3 px, err / (5 % |gt|)); e > 1 exactly for Fl outliers.
ERROR_BINS = np.array([0, 1 / 16, 1 / 8, 1 / 4, 1 / 2, 1, 2, 4, 8, 16])
ERROR_COLORS = np.array([[49, 54, 149], [69, 117, 180], [116, 173, 209], [171, 217, 233],
                         [224, 243, 248], [254, 224, 144], [253, 174, 97], [244, 109, 67],
                         [215, 48, 39], [165, 0, 38]], np.uint8)


def error_map(pred, gt, valid=None) -> np.ndarray:
    """Colour the end-point error of `pred` against `gt` (KITTI style).

    The normalised error e = min(‖pred-gt‖ / 3, ‖pred-gt‖ / (0.05 ‖gt‖)) is binned on a log
    scale (`ERROR_BINS`) from blue (e < 1/16) to red (e >= 16); warm colours (e > 1) are exactly
    the KITTI Fl outliers. Invalid pixels are black.

    Args:
      pred, gt: `[H, W, 2]` flow.
      valid: optional `[H, W]` bool.

    Returns:
      `[H, W, 3]` uint8.
    """
    pred = np.asarray(pred, np.float64)
    gt = np.asarray(gt, np.float64)
    if pred.shape != gt.shape or pred.ndim != 3 or pred.shape[-1] != 2:
        raise ValueError(f"pred, gt: expected equal [H, W, 2] shapes, got {pred.shape} and {gt.shape}")
    valid = np.ones(pred.shape[:2], bool) if valid is None else np.asarray(valid, bool)
    if valid.shape != pred.shape[:2]:
        raise ValueError(f"valid: expected shape {pred.shape[:2]}, got {valid.shape}")
    error = np.linalg.norm(pred - gt, axis=-1)
    magnitude = np.linalg.norm(gt, axis=-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        normalised = np.minimum(error / 3.0, np.where(magnitude > 0, error / (0.05 * magnitude), np.inf))
    index = np.clip(np.searchsorted(ERROR_BINS, normalised, side="right") - 1, 0, len(ERROR_BINS) - 1)
    image = ERROR_COLORS[index]
    image[~(valid & np.isfinite(normalised))] = 0
    return image


def label_to_color(labels) -> np.ndarray:
    """Colour `[H, W]` integer labels in [0, 255] with the VOC palette: `[H, W, 3]` uint8."""
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ValueError(f"labels: expected shape [H, W], got {labels.shape}")
    if labels.size and (labels.min() < 0 or labels.max() > 255):
        raise ValueError(f"labels: values must lie in [0, 255], got [{labels.min()}, {labels.max()}]")
    return voc_palette()[labels.astype(np.int64)]


def to_uint8_image(image) -> np.ndarray:
    """`[H, W]`, `[H, W, 1]` or `[H, W, 3]` image -> `[H, W, 3]` uint8 (floats in [0, 1] are scaled)."""
    image = np.asarray(image)
    if image.ndim == 3 and image.shape[-1] == 1:
        image = image[..., 0]
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=-1)
    if image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError(f"image: expected [H, W], [H, W, 1] or [H, W, 3], got {image.shape}")
    if image.dtype == np.uint8:
        return image
    if image.dtype == bool:
        return image.astype(np.uint8) * 255
    if np.issubdtype(image.dtype, np.floating):
        return np.clip(np.round(np.nan_to_num(image) * 255), 0, 255).astype(np.uint8)
    raise ValueError(f"image: expected uint8, bool or float in [0, 1], got {image.dtype}")


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow without FreeType sizes
        return ImageFont.load_default()


def save_panel(path, images: Sequence, titles: Optional[Sequence[str]] = None, *,
               columns: Optional[int] = None, max_width: Optional[int] = None) -> np.ndarray:
    """Save images side by side as a titled PNG grid.

    Args:
      path: output `.png` path (parent directories are created).
      images: list of `[H, W, 3]` uint8 images (or what `to_uint8_image` accepts); each cell is
        as large as the largest image, smaller ones are centred.
      titles: optional list of strings, one per image, written above each cell.
      columns: images per row (default: 2 for 4 or more images, else all in one row).
      max_width: optional width in pixels to scale the whole panel down to.

    Returns:
      The panel as `[H', W', 3]` uint8.
    """
    images = [to_uint8_image(image) for image in images]
    if not images:
        raise ValueError("images: need at least one image")
    if titles is not None and len(titles) != len(images):
        raise ValueError(f"titles: expected {len(images)} titles, got {len(titles)}")
    if columns is None:
        columns = 2 if len(images) >= 4 else len(images)
    rows = -(-len(images) // columns)
    cell_h = max(image.shape[0] for image in images)
    cell_w = max(image.shape[1] for image in images)
    font_size = max(12, min(32, cell_h // 16))
    title_h = int(font_size * 1.6) if titles is not None else 0
    gap = 4
    panel = Image.new("RGB", (columns * (cell_w + gap) + gap,
                              rows * (cell_h + title_h + gap) + gap), "white")
    draw = ImageDraw.Draw(panel)
    font = _font(font_size)
    for i, image in enumerate(images):
        row, col = divmod(i, columns)
        x0 = gap + col * (cell_w + gap)
        y0 = gap + row * (cell_h + title_h + gap)
        if titles is not None:
            draw.text((x0 + 2, y0 + font_size * 0.2), str(titles[i]), fill="black", font=font)
        h, w = image.shape[:2]
        panel.paste(Image.fromarray(image), (x0 + (cell_w - w) // 2, y0 + title_h + (cell_h - h) // 2))
    if max_width is not None and panel.width > max_width:
        panel = panel.resize((max_width, round(panel.height * max_width / panel.width)),
                             Image.Resampling.LANCZOS)
    directory = os.path.dirname(os.fspath(path))
    if directory:
        os.makedirs(directory, exist_ok=True)
    panel.save(path)
    return np.asarray(panel)
