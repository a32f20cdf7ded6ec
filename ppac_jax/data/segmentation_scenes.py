"""Procedural segmentation scenes: image + per-pixel class labels with a VOC-like void band.

A scene is a textured background (class 0) plus several foreground objects, each of a class
drawn from a fixed set. Every class has its own shape statistics (ellipse or polygon, vertex
count, aspect ratio, size) and texture statistics (colour, noise wavelengths and amplitude,
stripes). Some classes deliberately share a colour and differ only in texture scale or shape
(``disc``/``blob``, ``slab``/``tile``): a segmenter that sees the image at reduced resolution
confuses them, and its upsampled output is coarse at object boundaries. Objects occlude back to
front; the label of a pixel is the class of the front-most object covering it. Around some
objects a band of label 255 (void) covers the visible boundary, as VOC's annotations have.

Rendering reuses the layer geometry and noise of :mod:`ppac_jax.data.synthetic` (frame 1 only).
Everything is numpy and deterministic from the seed.

    scene = make_segmentation_scene(seed=3, height=96, width=128)
    scene["image"]   # [H, W, 3] float32 in [0, 1]
    scene["labels"]  # [H, W] uint8: class in [0, C) or 255 (void)
"""

from __future__ import annotations

import dataclasses

import numpy as np

from ppac_jax.data import synthetic

__all__ = ["ObjectClass", "CLASSES", "CLASS_NAMES", "NUM_CLASSES", "VOID_LABEL",
           "SegmentationSceneConfig", "make_segmentation_scene", "make_segmentation_scenes"]

VOID_LABEL = 255


@dataclasses.dataclass(frozen=True)
class ObjectClass:
    """Shape and texture statistics of one class (sizes as fractions of min(H, W))."""

    name: str
    shape: str = "ellipse"  # "ellipse" | "polygon" | "background"
    vertices: tuple[int, int] = (3, 3)  # inclusive range (polygons)
    aspect: tuple[float, float] = (0.6, 1.0)
    radius: tuple[float, float] = (0.12, 0.25)
    colour: tuple[float, float, float] = (0.5, 0.5, 0.5)
    colour_jitter: float = 0.05  # std of the per-object base colour around ``colour``
    wavelengths: tuple[int, ...] = (9,)  # noise scales in pixels
    amplitude: float = 0.12  # noise amplitude
    stripe_period: tuple[float, float] | None = None  # stripes with a period in this range


CLASSES: tuple[ObjectClass, ...] = (
    ObjectClass("background", shape="background", colour=(0.47, 0.47, 0.42), colour_jitter=0.08,
                wavelengths=(24, 48), amplitude=0.10),
    ObjectClass("disc", shape="ellipse", aspect=(0.8, 1.0), radius=(0.18, 0.32),
                colour=(0.78, 0.36, 0.26), wavelengths=(3, 5), amplitude=0.16),
    ObjectClass("blob", shape="ellipse", aspect=(0.45, 0.8), radius=(0.18, 0.32),
                colour=(0.78, 0.36, 0.26), wavelengths=(17, 33), amplitude=0.16),
    ObjectClass("slab", shape="polygon", vertices=(4, 4), aspect=(0.3, 0.55),
                radius=(0.22, 0.36), colour=(0.26, 0.42, 0.76), wavelengths=(9,),
                amplitude=0.05, stripe_period=(4.0, 7.0)),
    ObjectClass("tile", shape="polygon", vertices=(5, 7), aspect=(0.75, 1.0),
                radius=(0.16, 0.28), colour=(0.26, 0.42, 0.76), wavelengths=(9,),
                amplitude=0.12),
    ObjectClass("shard", shape="polygon", vertices=(3, 3), aspect=(0.6, 1.0),
                radius=(0.18, 0.30), colour=(0.36, 0.68, 0.32), colour_jitter=0.07,
                wavelengths=(17,), amplitude=0.02),
)
CLASS_NAMES = tuple(c.name for c in CLASSES)
NUM_CLASSES = len(CLASSES)


@dataclasses.dataclass(frozen=True)
class SegmentationSceneConfig:
    """Knobs of the scene generator."""

    num_objects: tuple[int, int] = (3, 6)  # inclusive range of foreground objects
    void_probability: float = 0.5  # chance an object gets a void band around its boundary
    void_width: tuple[int, int] = (1, 2)  # inclusive range of the band's half width, pixels
    noise_std: float = 0.01  # sensor noise
    classes: tuple[ObjectClass, ...] = CLASSES


def _class_texture(rng, cls: ObjectClass, size: int) -> np.ndarray:
    """A [size, size, 3] texture in [0, 1] following the statistics of ``cls``."""
    base = np.asarray(cls.colour, np.float32) + cls.colour_jitter * rng.standard_normal(3)
    octaves = tuple(sorted({max(1, size // int(wl)) for wl in cls.wavelengths}))
    noise = synthetic._smooth_noise(rng, size, octaves)
    tint = 0.6 + 0.4 * rng.uniform(0, 1, 3).astype(np.float32)
    tex = base + cls.amplitude * noise[..., None] * tint
    if cls.stripe_period is not None:
        angle = rng.uniform(0, np.pi)
        period = rng.uniform(*cls.stripe_period)
        yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
        stripes = np.sin(2 * np.pi * (np.cos(angle) * xx + np.sin(angle) * yy) / period)
        tex = tex + 0.14 * stripes[..., None]
    return np.clip(tex, 0, 1).astype(np.float32)


def _layer(rng, height, width, cls: ObjectClass):
    """A frame-1 layer of :mod:`synthetic` (its ``inside`` / ``colour``) with ``cls``'s statistics."""
    layer = synthetic._Layer.__new__(synthetic._Layer)
    if cls.shape == "background":
        layer.background = True
        layer.centre = np.array([width / 2, height / 2])
        layer.tex_size = int(2 * max(height, width))
    else:
        layer.background = False
        layer.centre = np.array([rng.uniform(0, width), rng.uniform(0, height)])
        layer.radius = rng.uniform(*cls.radius) * min(height, width)
        layer.kind = cls.shape
        layer.aspect = rng.uniform(*cls.aspect)
        layer.tilt = rng.uniform(0, np.pi)
        if cls.shape == "polygon":
            n = int(rng.integers(cls.vertices[0], cls.vertices[1] + 1))
            # evenly spaced corners, jittered: convex and never a sliver
            angles = (rng.uniform(0, 2 * np.pi) + 2 * np.pi * np.arange(n) / n
                      + rng.uniform(-0.25, 0.25, n) * 2 * np.pi / n)
            layer.vertices = np.stack([np.cos(angles), np.sin(angles)], -1) * layer.radius
        layer.tex_size = int(np.ceil(2.6 * layer.radius)) + 2
    layer.texture = _class_texture(rng, cls, layer.tex_size)
    return layer


def _band(mask: np.ndarray, width: int) -> np.ndarray:
    """Pixels within ``width`` (chessboard distance) of the boundary of ``mask``."""
    grown, shrunk = mask.copy(), mask.copy()
    h, w = mask.shape
    padded_true = np.pad(mask, width, constant_values=False)
    padded_false = np.pad(mask, width, constant_values=True)
    for dy in range(-width, width + 1):
        for dx in range(-width, width + 1):
            grown |= padded_true[width + dy:width + dy + h, width + dx:width + dx + w]
            shrunk &= padded_false[width + dy:width + dy + h, width + dx:width + dx + w]
    return grown & ~shrunk


def make_segmentation_scene(seed: int, *, height: int = 96, width: int = 128,
                            config: SegmentationSceneConfig | None = None) -> dict[str, np.ndarray]:
    """Render one scene, deterministic from ``seed``.

    Args:
      seed: integer seed.
      height, width: image size in pixels (>= 16).
      config: :class:`SegmentationSceneConfig` (default: the 6 classes of ``CLASSES``).

    Returns:
      dict with ``image`` ``[H, W, 3]`` float32 in [0, 1], ``labels`` ``[H, W]`` uint8 (class
      index in ``[0, C)`` or 255 = void) and ``objects`` ``[H, W]`` int32 (index of the visible
      layer, 0 = background; void pixels keep their layer).

    Raises:
      ValueError: size below 16 pixels or a config without a background class first.
    """
    if height < 16 or width < 16:
        raise ValueError(f"height and width must be >= 16, got {(height, width)}")
    cfg = config or SegmentationSceneConfig()
    if not cfg.classes or cfg.classes[0].shape != "background":
        raise ValueError("config.classes: the first class must have shape 'background'")
    rng = np.random.default_rng([seed, 0x5E6])
    n = int(rng.integers(cfg.num_objects[0], cfg.num_objects[1] + 1))
    classes = [0] + [int(c) for c in rng.integers(1, len(cfg.classes), n)]
    layers = [_layer(rng, height, width, cfg.classes[c]) for c in classes]
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    image = np.zeros((height, width, 3), np.float32)
    owner = np.zeros((height, width), np.int32)
    for k, layer in enumerate(layers):
        m = layer.inside(x, y)
        if m.any():
            image[m] = layer.colour(x[m], y[m])
            owner[m] = k
    labels = np.asarray(classes, np.uint8)[owner]
    for k in range(1, len(layers)):
        voided = rng.uniform() < cfg.void_probability
        band_width = int(rng.integers(cfg.void_width[0], cfg.void_width[1] + 1))
        visible = owner == k
        if voided and visible.any():
            labels[_band(visible, band_width)] = VOID_LABEL
    image = np.clip(image + cfg.noise_std * rng.standard_normal(image.shape), 0, 1)
    return {"image": image.astype(np.float32), "labels": labels, "objects": owner}


def make_segmentation_scenes(seeds, *, height: int = 96, width: int = 128,
                             config: SegmentationSceneConfig | None = None) -> dict[str, np.ndarray]:
    """Stack :func:`make_segmentation_scene` for several seeds (leading ``[N]`` axis)."""
    scenes = [make_segmentation_scene(int(s), height=height, width=width, config=config)
              for s in seeds]
    if not scenes:
        raise ValueError("seeds must not be empty")
    return {k: np.stack([s[k] for s in scenes]) for k in scenes[0]}
