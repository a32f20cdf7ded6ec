"""Bilinear resampling and ceil-mode max pooling with PyTorch's conventions (NHWC).

SPEC_wave2.md, introduction ("Bilinear resampling").
"""

from __future__ import annotations

from typing import Sequence

import jax.numpy as jnp
import numpy as np
from jax import lax

from ppac_jax.ops import geometry as geo

__all__ = ["bilinear_taps", "max_pool_ceil", "resize_bilinear"]


def bilinear_taps(n_in: int, n_out: int, *, align_corners: bool = False):
    """Source indices and weights of a 1-D bilinear resampling from ``n_in`` to ``n_out``.

    ``align_corners=False``: output ``o`` reads ``s = max((o + 0.5) n_in / n_out - 0.5, 0)``;
    ``True``: ``s = o (n_in - 1) / (n_out - 1)``. ``i0 = floor(s)``, ``i1 = min(i0 + 1, n_in - 1)``,
    weight ``s - i0`` on ``i1``. No anti-aliasing.

    Returns:
      ``(i0 [n_out] int, i1 [n_out] int, w1 [n_out] float64)`` NumPy arrays.
    """
    o = np.arange(n_out, dtype=np.float64)
    if align_corners:
        src = o * ((n_in - 1) / (n_out - 1)) if n_out > 1 else np.zeros_like(o)
    else:
        src = np.maximum((o + 0.5) * (n_in / n_out) - 0.5, 0.0)
    i0 = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
    i1 = np.minimum(i0 + 1, n_in - 1)
    return i0, i1, src - i0


def resize_axis(x, axis: int, n_out: int, align_corners: bool = False, crop=None):
    """:func:`resize_bilinear` along one axis; ``crop = (start, length)`` keeps only those
    output rows (computed alone)."""
    n_in = x.shape[axis]
    if n_in == n_out and crop is None:
        return x
    i0, i1, w1 = bilinear_taps(n_in, n_out, align_corners=align_corners)
    if crop is not None:
        i0, i1, w1 = (v[crop[0]:crop[0] + crop[1]] for v in (i0, i1, w1))
    shape = [1] * x.ndim
    shape[axis] = len(w1)
    w1 = jnp.asarray(w1.reshape(shape), x.dtype)
    return (jnp.take(x, jnp.asarray(i0), axis=axis) * (1 - w1)
            + jnp.take(x, jnp.asarray(i1), axis=axis) * w1)


def resize_bilinear(x, size: Sequence[int], *, align_corners: bool = False):
    """Bilinear resize of ``x [B, H, W, C]`` to ``size = (Ho, Wo)``.

    Equals PyTorch ``F.interpolate(x, size, mode="bilinear", align_corners=...)`` (separable,
    2 taps per axis, rows then columns, border samples clamped, no anti-aliasing when
    down-scaling: a 2x down-scale averages the two middle samples of each pair). An axis whose
    size does not change is returned as is. Differentiable; integer input is resized in float32.

    Args:
      x: ``[B, H, W, C]`` array.
      size: ``(Ho, Wo)`` positive ints.
      align_corners: PyTorch's flag.

    Returns:
      ``[B, Ho, Wo, C]`` in ``x``'s (floating) dtype.

    Raises:
      ValueError: ``x`` not rank 4 or ``size`` not two positive ints.
    """
    geo.check_rank(x, 4, "x", "B, H, W, C")
    h, w = geo.check_positive(size, "size")
    if not jnp.issubdtype(x.dtype, jnp.floating):
        x = x.astype(jnp.float32)
    return resize_axis(resize_axis(x, 1, h, align_corners), 2, w, align_corners)


def max_pool_ceil(x, *, window: int = 2, stride: int = 2):
    """Max pooling ``window x window`` / ``stride`` with PyTorch ``ceil_mode=True`` (no padding).

    ``x`` ``[B, H, W, C]`` -> ``[B, ceil((H - window) / stride) + 1, ..., C]``; a window that hangs
    over the bottom/right edge takes the max of its valid entries (as PyTorch, a window that
    would start entirely outside the input is dropped).

    Raises:
      ValueError: ``x`` not rank 4 or spatially smaller than ``window``.
    """
    geo.check_rank(x, 4, "x", "B, H, W, C")
    pads = []
    for n in x.shape[1:3]:
        if n < window:
            raise ValueError(f"x is {x.shape[1:3]} spatially; max pooling needs at least "
                             f"{window} x {window}")
        out = -(-(n - window) // stride) + 1
        if (out - 1) * stride >= n:
            out -= 1
        pads.append((0, (out - 1) * stride + window - n))
    return lax.reduce_window(x, np.array(-np.inf, x.dtype), lax.max, (1, window, window, 1),
                             (1, stride, stride, 1), [(0, 0)] + pads + [(0, 0)])
