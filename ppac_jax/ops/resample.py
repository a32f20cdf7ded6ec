"""Bilinear resampling and ceil-mode max pooling with PyTorch semantics (NHWC).

``resize_bilinear`` is ``torch.nn.functional.interpolate(mode="bilinear",
align_corners=False)``: output index ``o`` reads source coordinate
``s = (o + 0.5) * n_in / n_out - 0.5`` clamped below at 0, ``i0 = floor(s)``,
``i1 = min(i0 + 1, n_in - 1)``, weight ``s - i0`` on ``i1``; no anti-aliasing, so a 2x
down-scale averages the two middle samples of each pair (SPEC_wave2, "Bilinear resampling").
"""

from __future__ import annotations

from typing import Sequence

import jax.numpy as jnp
import numpy as np
from jax import lax

from ppac_jax.ops import geometry as geo


def _axis_taps(n_in: int, n_out: int):
    """``(i0, i1, w1)`` numpy arrays of one axis (float64 weights)."""
    o = np.arange(n_out, dtype=np.float64)
    s = np.maximum((o + 0.5) * (n_in / n_out) - 0.5, 0.0)
    i0 = np.minimum(np.floor(s).astype(np.int64), n_in - 1)
    i1 = np.minimum(i0 + 1, n_in - 1)
    return i0, i1, s - i0


def _resize_axis(x, axis: int, n_out: int):
    n_in = x.shape[axis]
    if n_in == n_out:
        return x
    i0, i1, w1 = _axis_taps(n_in, n_out)
    shape = [1] * x.ndim
    shape[axis] = n_out
    w1 = jnp.asarray(w1.reshape(shape), x.dtype)
    a = jnp.take(x, jnp.asarray(i0), axis=axis)
    b = jnp.take(x, jnp.asarray(i1), axis=axis)
    return a * (1 - w1) + b * w1


def resize_bilinear(x, size: Sequence[int]):
    """Bilinear resize of ``x`` ``[B, H, W, C]`` to ``[B, h, w, C]``, ``size = (h, w)``.

    PyTorch ``interpolate(x, size, mode="bilinear", align_corners=False)`` (no anti-aliasing;
    rows, then columns). Differentiable; the dtype of ``x`` is kept.

    Raises:
      ValueError: ``x`` is not 4-D or ``size`` is not a pair of positive ints.
    """
    geo.check_rank(x, 4, "x", "B, H, W, C")
    h, w = geo.check_positive(size, "size")
    if not jnp.issubdtype(x.dtype, jnp.floating):
        x = x.astype(jnp.float32)
    return _resize_axis(_resize_axis(x, 1, h), 2, w)


def max_pool_ceil(x, window: int = 2, stride: int = 2):
    """Max pooling ``window x window`` / ``stride`` with PyTorch ``ceil_mode=True`` (no padding).

    ``x`` ``[B, H, W, C]`` -> ``[B, ceil((H - window) / stride) + 1, ..., C]``; a window that hangs
    over the bottom/right edge takes the max of its valid entries (as PyTorch, a window that
    would start entirely outside the input is dropped).
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


__all__ = ["resize_bilinear", "max_pool_ceil"]
