"""An image-only, coarse-to-fine flow estimator with per-scale match confidences.

In the spirit of HD3's match densities: at every scale of an image pyramid, frame 2 is warped
by the flow found so far, a matching cost (sum of squared differences of high-pass colour
features over a 3x3 patch) is computed for every displacement in a ``(2r+1)^2`` window, a
softmax over the displacements gives a match density, the flow residual is its expected
displacement, and the confidence of that scale is the probability of the most likely
displacement. The final flow and every scale's confidence are upsampled to full resolution.

It never sees ground truth; its errors come from what makes matching hard: texture-less
regions (flat cost, low confidence), occlusions (no correct match), motion boundaries (coarse
scales and the final upsampling mix two motions), and large motions at coarse scales.

    flow, conf = estimate_flow(image1, image2)   # [B,H,W,2], [B,H,W,L]
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["EstimatorConfig", "confidence_report", "estimate_flow", "estimate_flow_numpy"]


@dataclasses.dataclass(frozen=True)
class EstimatorConfig:
    """Pyramid strides (coarse to fine; one confidence level each), search radius, softmax
    temperature relative to the local feature energy, and the high-pass window."""

    strides: tuple[int, ...] = (16, 8, 4, 2, 1)
    radius: int = 2
    temperature: float = 0.1
    highpass: int = 5
    energy_floor: float = 1e-4
    smoothing: int = 5  # confidence-weighted box filter of each scale's flow (1 = off)


def _box(x, size):
    """Mean over a size x size window, edge-padded, same size. x: [B,H,W,C]."""
    p = size // 2
    xp = jnp.pad(x, ((0, 0), (p, p), (p, p), (0, 0)), mode="edge")
    s = jax.lax.reduce_window(xp, 0.0, jax.lax.add, (1, size, size, 1), (1, 1, 1, 1), "VALID")
    return s / (size * size)


def _downsample(x, stride):
    if stride == 1:
        return x
    b, h, w, c = x.shape
    return x.reshape(b, h // stride, stride, w // stride, stride, c).mean(axis=(2, 4))


def _warp(x, flow):
    """Bilinear sample x [B,H,W,C] at p + flow(p) (edge-clamped)."""
    b, h, w, c = x.shape
    gy, gx = jnp.meshgrid(jnp.arange(h, dtype=x.dtype), jnp.arange(w, dtype=x.dtype), indexing="ij")
    sx = jnp.clip(gx + flow[..., 0], 0, w - 1)
    sy = jnp.clip(gy + flow[..., 1], 0, h - 1)
    x0 = jnp.clip(jnp.floor(sx), 0, w - 2).astype(jnp.int32) if w > 1 else jnp.zeros_like(sx, jnp.int32)
    y0 = jnp.clip(jnp.floor(sy), 0, h - 2).astype(jnp.int32) if h > 1 else jnp.zeros_like(sy, jnp.int32)
    fx = (sx - x0)[..., None]
    fy = (sy - y0)[..., None]
    x1 = jnp.minimum(x0 + 1, w - 1)
    y1 = jnp.minimum(y0 + 1, h - 1)
    bi = jnp.arange(b)[:, None, None]
    g = lambda yy, xx: x[bi, yy, xx]
    top = g(y0, x0) * (1 - fx) + g(y0, x1) * fx
    bot = g(y1, x0) * (1 - fx) + g(y1, x1) * fx
    return top * (1 - fy) + bot * fy


def _features(img, highpass):
    return img - _box(img, highpass)


def _resize(x, h, w):
    return jax.image.resize(x, (x.shape[0], h, w, x.shape[3]), "bilinear")


def _match_level(f1, f2w, radius, temperature, energy_floor):
    """Match density over displacements; returns (expected residual [B,h,w,2], max prob [B,h,w])."""
    r = radius
    h, w = f1.shape[1:3]
    f2p = jnp.pad(f2w, ((0, 0), (r, r), (r, r), (0, 0)), mode="edge")
    disps = [(dy, dx) for dy in range(-r, r + 1) for dx in range(-r, r + 1)]
    costs = []
    for dy, dx in disps:
        shifted = f2p[:, r + dy:r + dy + h, r + dx:r + dx + w]
        costs.append(jnp.sum((f1 - shifted) ** 2, axis=-1, keepdims=True))
    cost = _box(jnp.concatenate(costs, axis=-1), 3)  # [B,h,w,D]
    # temperature relative to local feature energy: contrast-invariant densities, and a
    # texture-less patch gets a flat (low-confidence) density instead of an arbitrary peak
    energy = _box(jnp.sum(f1 ** 2, -1, keepdims=True), 3) + energy_floor
    prob = jax.nn.softmax(-cost / (temperature * energy), axis=-1)
    d = jnp.asarray(disps, f1.dtype)  # [D, 2] as (dy, dx)
    residual = jnp.einsum("bhwd,dc->bhwc", prob, d[:, ::-1])  # (dx, dy) = (u, v)
    return residual, jnp.max(prob, axis=-1)


@functools.partial(jax.jit, static_argnames=("config",))
def _estimate(image1, image2, config):
    b, h, w, _ = image1.shape
    flow = None
    confs = []
    for stride in config.strides:
        i1 = _downsample(image1, stride)
        i2 = _downsample(image2, stride)
        hl, wl = i1.shape[1:3]
        if flow is None:
            flow = jnp.zeros((b, hl, wl, 2), image1.dtype)
        else:
            scale = jnp.asarray([wl / flow.shape[2], hl / flow.shape[1]], image1.dtype)
            flow = _resize(flow, hl, wl) * scale
        f1 = _features(i1, config.highpass)
        f2w = _features(_warp(i2, flow), config.highpass)
        residual, conf = _match_level(f1, f2w, config.radius, config.temperature,
                                      config.energy_floor)
        flow = flow + residual
        if config.smoothing > 1:  # regularise: confident matches outvote their neighbours
            wgt = conf[..., None]
            flow = _box(flow * wgt, config.smoothing) / (_box(wgt, config.smoothing) + 1e-6)
        confs.append(_resize(conf[..., None], h, w))
    scale = jnp.asarray([w / flow.shape[2], h / flow.shape[1]], image1.dtype)
    flow = _resize(flow, h, w) * scale
    return flow, jnp.concatenate(confs, axis=-1)


def estimate_flow(image1, image2, *, config: EstimatorConfig | None = None):
    """Estimate optical flow from two frames only.

    Args:
      image1, image2: [B, H, W, 3] float images in [0, 1]; H and W divisible by the largest
        stride of ``config.strides``.
      config: :class:`EstimatorConfig` (default: strides 16..1, radius 2).

    Returns:
      flow: [B, H, W, 2] (u, v) from frame 1 to frame 2.
      confidence: [B, H, W, L] with L = len(config.strides), coarse to fine: per-scale
        probability of the most likely displacement, upsampled to full resolution.
    """
    config = config or EstimatorConfig()
    image1 = jnp.asarray(image1, jnp.float32)
    image2 = jnp.asarray(image2, jnp.float32)
    if image1.ndim != 4 or image1.shape[-1] != 3 or image1.shape != image2.shape:
        raise ValueError(f"image1/image2 must both be [B,H,W,3], got {image1.shape} and {image2.shape}")
    s = max(config.strides)
    if image1.shape[1] % s or image1.shape[2] % s:
        raise ValueError(f"image height/width {image1.shape[1:3]} must be divisible by the largest "
                         f"stride {s} of config.strides")
    if config.radius < 1:
        raise ValueError(f"config.radius must be >= 1, got {config.radius}")
    return _estimate(image1, image2, config)


def estimate_flow_numpy(image1, image2, *, config: EstimatorConfig | None = None,
                        chunk: int = 16):
    """:func:`estimate_flow` over a numpy batch of any size, in chunks of ``chunk`` images.

    Every chunk is padded to ``chunk`` images, so one compilation serves every data set size.
    Returns numpy arrays ([N, H, W, 2], [N, H, W, L]).
    """
    image1, image2 = np.asarray(image1, np.float32), np.asarray(image2, np.float32)
    n = len(image1)
    if n == 0:
        raise ValueError("image1: empty batch")
    flows, confs = [], []
    for i in range(0, n, chunk):
        a, b = image1[i:i + chunk], image2[i:i + chunk]
        pad = chunk - len(a)
        if pad:
            a = np.concatenate([a, np.repeat(a[-1:], pad, 0)])
            b = np.concatenate([b, np.repeat(b[-1:], pad, 0)])
        f, c = estimate_flow(a, b, config=config)
        flows.append(np.asarray(f)[:chunk - pad])
        confs.append(np.asarray(c)[:chunk - pad])
    return np.concatenate(flows), np.concatenate(confs)


def _ranks(x):
    r = np.empty(x.size, np.float64)
    r[np.argsort(x, kind="stable")] = np.arange(x.size)
    return r


def confidence_report(estimate, confidence, flow, valid=None) -> dict:
    """How good an estimate is, and how well its confidences predict its errors.

    Args:
      estimate, flow: [N, H, W, 2]; confidence: [N, H, W, L]; valid: optional [N, H, W] bool.

    Returns:
      dict with ``aee`` (mean EPE over valid pixels), ``aee_zero_flow`` (the same for a zero
      estimate), ``pearson`` and ``spearman``: correlations between the mean confidence over the
      L levels and the per-pixel EPE (negative = confident where accurate).
    """
    err = np.linalg.norm(np.asarray(estimate) - np.asarray(flow), axis=-1)
    conf = np.asarray(confidence).mean(-1)
    valid = np.ones(err.shape, bool) if valid is None else np.asarray(valid, bool)
    e, c = err[valid], conf[valid]
    return {"aee": float(e.mean()),
            "aee_zero_flow": float(np.linalg.norm(np.asarray(flow), axis=-1)[valid].mean()),
            "pearson": float(np.corrcoef(c, e)[0, 1]),
            "spearman": float(np.corrcoef(_ranks(c), _ranks(e))[0, 1])}
