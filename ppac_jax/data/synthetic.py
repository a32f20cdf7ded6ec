"""Procedural two-frame scenes with exact ground-truth optical flow.

A scene is a textured background plus several textured foreground layers (ellipses and
convex polygons), each moving with its own translation, rotation and scale about its centre,
composited back to front so that nearer layers occlude farther ones. Every layer is defined in
its own canonical coordinates ``u``; frame ``t`` shows it at ``x = A_t(u)`` (an affine map), so
the flow of frame 1 at pixel ``x`` is ``A_2(A_1^{-1}(x)) - x`` for the front-most layer covering
``x``. Some layers are nearly flat in colour (texture-less), which is what makes matching hard
there, and layers may leave the image or uncover background (occlusions).

Everything is numpy, deterministic from the seed, and independent of the rest of ppac_jax.

    scene = make_scene(seed=3, height=96, width=128)
    scene["image1"]  # [H, W, 3] float32 in [0, 1]
    scene["flow"]    # [H, W, 2] float32, (u, v) = (dx, dy) from frame 1 to frame 2
    scene["depth"]   # [H, W] float32 metres: each layer a slanted plane, background farthest

Depth is drawn from its own generator (``default_rng([seed, 1])``), so adding it left every
other output of a seed unchanged.
"""

from __future__ import annotations

import dataclasses

import numpy as np

__all__ = ["SceneConfig", "make_scene", "make_scenes"]


@dataclasses.dataclass(frozen=True)
class SceneConfig:
    """Knobs of the scene generator (sizes in pixels, angles in radians)."""

    num_layers: tuple[int, int] = (3, 6)  # inclusive range of foreground layers
    layer_radius: tuple[float, float] = (0.12, 0.32)  # fraction of min(H, W)
    max_translation: float = 8.0  # per layer, pixels
    max_rotation: float = 0.12
    max_log_scale: float = 0.08
    background_translation: float = 4.0
    background_log_scale: float = 0.03
    flat_probability: float = 0.3  # chance a layer is (nearly) texture-less
    noise_std: float = 0.005  # sensor noise added to both frames


def _smooth_noise(rng: np.random.Generator, size: int, octaves: tuple[int, ...]) -> np.ndarray:
    """Multi-octave value noise on a [size, size] grid, zero mean, unit-ish std."""
    out = np.zeros((size, size), np.float32)
    for cells in octaves:
        coarse = rng.standard_normal((cells + 1, cells + 1)).astype(np.float32)
        t = np.linspace(0.0, cells, size, dtype=np.float32)
        i = np.minimum(t.astype(np.int64), cells - 1)
        f = t - i
        f = f * f * (3 - 2 * f)  # smoothstep: no visible grid creases
        rows = coarse[i] * (1 - f)[:, None] + coarse[i + 1] * f[:, None]
        out += (rows[:, i] * (1 - f)[None] + rows[:, i + 1] * f[None]) / np.sqrt(cells)
    return out / (out.std() + 1e-6)


def _texture(rng: np.random.Generator, size: int, flat: bool) -> np.ndarray:
    """A colour texture [size, size, 3] in [0, 1]: coloured noise, stripes or a flat tint."""
    base = rng.uniform(0.15, 0.85, 3).astype(np.float32)
    if flat:
        shade = 0.015 * _smooth_noise(rng, size, (2,))
        return np.clip(base + shade[..., None], 0, 1)
    # wavelengths in pixels, so that textures have detail at the matching scales
    wavelengths = rng.choice([3, 5, 9, 17, 33], size=rng.integers(2, 4), replace=False)
    octaves = tuple(sorted({max(1, size // int(wl)) for wl in wavelengths}))
    noise = _smooth_noise(rng, size, octaves)
    tint = rng.uniform(-1, 1, 3).astype(np.float32)
    tint /= np.linalg.norm(tint) + 1e-6
    tex = base + 0.18 * noise[..., None] * (0.5 + 0.5 * np.abs(tint))
    if rng.uniform() < 0.3:  # stripes: strongly oriented texture
        ang = rng.uniform(0, np.pi)
        yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
        period = rng.uniform(4, 12)
        stripes = np.sin(2 * np.pi * (np.cos(ang) * xx + np.sin(ang) * yy) / period)
        tex += 0.12 * stripes[..., None] * tint
    return np.clip(tex, 0, 1).astype(np.float32)


def _sample_bilinear(tex: np.ndarray, uy: np.ndarray, ux: np.ndarray) -> np.ndarray:
    """Sample [S, S, 3] texture at float coords (clamped at the border)."""
    s = tex.shape[0]
    uy = np.clip(uy, 0, s - 1.001)
    ux = np.clip(ux, 0, s - 1.001)
    y0 = uy.astype(np.int64)
    x0 = ux.astype(np.int64)
    fy = (uy - y0)[..., None]
    fx = (ux - x0)[..., None]
    top = tex[y0, x0] * (1 - fx) + tex[y0, x0 + 1] * fx
    bot = tex[y0 + 1, x0] * (1 - fx) + tex[y0 + 1, x0 + 1] * fx
    return top * (1 - fy) + bot * fy


def _affine(centre, translation, angle, log_scale):
    """2x3 map x -> c + t + s R (x - c) in (x, y) order."""
    s = np.exp(log_scale)
    rot = s * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    offset = centre + translation - rot @ centre
    return rot, offset


class _Layer:
    def __init__(self, rng, height, width, cfg: SceneConfig, background: bool):
        self.background = background
        r0 = min(height, width)
        if background:
            self.centre = np.array([width / 2, height / 2])
            t = rng.uniform(-1, 1, 2) * cfg.background_translation
            ang, ls = 0.0, rng.uniform(-1, 1) * cfg.background_log_scale
            self.tex_size = int(2 * max(height, width))
            flat = False
        else:
            self.centre = np.array([rng.uniform(0, width), rng.uniform(0, height)])
            t = rng.uniform(-1, 1, 2) * cfg.max_translation
            ang = rng.uniform(-1, 1) * cfg.max_rotation
            ls = rng.uniform(-1, 1) * cfg.max_log_scale
            self.radius = rng.uniform(*cfg.layer_radius) * r0
            self.tex_size = int(np.ceil(2.6 * self.radius)) + 2
            flat = rng.uniform() < cfg.flat_probability
            self.kind = "ellipse" if rng.uniform() < 0.5 else "polygon"
            self.aspect = rng.uniform(0.5, 1.0)
            self.tilt = rng.uniform(0, np.pi)
            if self.kind == "polygon":
                n = int(rng.integers(3, 8))
                angles = np.sort(rng.uniform(0, 2 * np.pi, n))
                self.vertices = np.stack([np.cos(angles), np.sin(angles)], -1) * self.radius
        self.texture = _texture(rng, self.tex_size, flat)
        # frame 1 pose is identity (canonical coords = frame-1 coords); frame 2 pose = motion
        self.rot2, self.off2 = _affine(self.centre, t, ang, ls)

    def canonical(self, x, y, frame):
        """Canonical (frame-1) coords of image points x, y seen in `frame` (1 or 2)."""
        if frame == 1:
            return x, y
        inv = np.linalg.inv(self.rot2)
        px, py = x - self.off2[0], y - self.off2[1]
        return inv[0, 0] * px + inv[0, 1] * py, inv[1, 0] * px + inv[1, 1] * py

    def inside(self, cx, cy):
        if self.background:
            return np.ones_like(cx, bool)
        dx, dy = cx - self.centre[0], cy - self.centre[1]
        c, s = np.cos(self.tilt), np.sin(self.tilt)
        lx, ly = c * dx + s * dy, -s * dx + c * dy
        if self.kind == "ellipse":
            return (lx / self.radius) ** 2 + (ly / (self.radius * self.aspect)) ** 2 <= 1.0
        ly = ly / self.aspect
        inside = np.ones_like(cx, bool)
        v = self.vertices
        for k in range(len(v)):  # convex polygon with counter-clockwise vertices
            a, b = v[k], v[(k + 1) % len(v)]
            inside &= (b[0] - a[0]) * (ly - a[1]) - (b[1] - a[1]) * (lx - a[0]) >= 0
        return inside

    def colour(self, cx, cy):
        half = self.tex_size / 2
        ty, tx = cy - self.centre[1] + half, cx - self.centre[0] + half
        return _sample_bilinear(self.texture, ty, tx)

    def flow(self, x, y):
        """Flow at frame-1 points on this layer: A2(x) - x."""
        nx = self.rot2[0, 0] * x + self.rot2[0, 1] * y + self.off2[0]
        ny = self.rot2[1, 0] * x + self.rot2[1, 1] * y + self.off2[1]
        return np.stack([nx - x, ny - y], -1)


def make_scene(seed: int, *, height: int = 96, width: int = 128,
               config: SceneConfig | None = None) -> dict[str, np.ndarray]:
    """Render one two-frame scene, deterministic from ``seed``.

    Returns a dict with ``image1``, ``image2`` ([H, W, 3] float32 in [0, 1]), ``flow``
    ([H, W, 2] float32 (u, v) from frame 1 to frame 2, exact for every pixel), ``occlusion``
    ([H, W] bool: the frame-1 pixel is hidden or outside the image in frame 2) and ``layer``
    ([H, W] int32: index of the visible layer in frame 1, 0 = background) and ``depth``
    ([H, W] float32 metres in frame 1, see :func:`_layer_depth`).
    """
    if height < 16 or width < 16:
        raise ValueError(f"height and width must be >= 16, got {(height, width)}")
    cfg = config or SceneConfig()
    rng = np.random.default_rng(seed)
    n = int(rng.integers(cfg.num_layers[0], cfg.num_layers[1] + 1))
    layers = [_Layer(rng, height, width, cfg, background=True)]
    layers += [_Layer(rng, height, width, cfg, background=False) for _ in range(n)]
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)

    images, owner = [], None
    for frame in (1, 2):
        img = np.zeros((height, width, 3), np.float32)
        own = np.zeros((height, width), np.int32)
        for k, layer in enumerate(layers):
            cx, cy = layer.canonical(x, y, frame)
            m = layer.inside(cx, cy)
            if m.any():
                img[m] = layer.colour(cx[m], cy[m])
                own[m] = k
        noise = cfg.noise_std * rng.standard_normal(img.shape).astype(np.float32)
        images.append(np.clip(img + noise, 0, 1))
        if frame == 1:
            owner = own
    flow = np.zeros((height, width, 2), np.float32)
    for k, layer in enumerate(layers):
        m = owner == k
        if m.any():
            flow[m] = layer.flow(x[m], y[m])
    # occlusion: where the frame-1 point lands in frame 2, is the same layer in front?
    tx, ty = x + flow[..., 0], y + flow[..., 1]
    outside = (tx < 0) | (tx > width - 1) | (ty < 0) | (ty > height - 1)
    occluded = outside.copy()
    for k in range(len(layers) - 1, 0, -1):
        cx, cy = layers[k].canonical(tx, ty, 2)
        covers = layers[k].inside(cx, cy) & (owner < k)
        occluded |= covers
    return {"image1": images[0], "image2": images[1], "flow": flow,
            "occlusion": occluded, "layer": owner,
            "depth": _layer_depth(seed, layers, owner, x, y)}


def _layer_depth(seed, layers, owner, x, y) -> np.ndarray:
    """Frame-1 depth [H, W] float32 in metres: layer k is the plane
    ``d_k (1 + a_k (x - c_x) / W + b_k (y - c_y) / H)`` about its centre ``c``.

    The background sits at 8-10 m with slopes |a|, |b| <= 0.15 (so at >= 6.8 m everywhere), the
    foreground layers at 1-5 m with slopes <= 0.25 (so at <= 6.25 m), their centre distances
    decreasing from back to front. Drawn from ``default_rng([seed, 1])``.
    """
    rng = np.random.default_rng([seed, 1])
    height, width = owner.shape
    n = len(layers) - 1
    distances = np.concatenate([[rng.uniform(8.0, 10.0)],
                                np.sort(rng.uniform(1.0, 5.0, n))[::-1]])
    slopes = rng.uniform(-1, 1, (n + 1, 2)) * np.where(np.arange(n + 1) == 0, 0.15, 0.25)[:, None]
    depth = np.zeros((height, width), np.float32)
    for k, layer in enumerate(layers):
        m = owner == k
        if m.any():
            rel = (slopes[k, 0] * (x[m] - layer.centre[0]) / width
                   + slopes[k, 1] * (y[m] - layer.centre[1]) / height)
            depth[m] = distances[k] * (1.0 + rel)
    return depth


def make_scenes(seeds, *, height: int = 96, width: int = 128,
                config: SceneConfig | None = None) -> dict[str, np.ndarray]:
    """Stack :func:`make_scene` for several seeds: each entry gets a leading [N] axis."""
    scenes = [make_scene(int(s), height=height, width=width, config=config) for s in seeds]
    if not scenes:
        raise ValueError("seeds must not be empty")
    return {k: np.stack([s[k] for s in scenes]) for k in scenes[0]}
