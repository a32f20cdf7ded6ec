"""Bilinear resampling with PyTorch's ``interpolate(mode="bilinear")`` conventions (NHWC).

Used by the joint-upsampling networks (guide down-scaling, the ``Bilinear`` baseline,
``apply_model``). SPEC_wave2.md, introduction ("Bilinear resampling").
"""

from __future__ import annotations

import numpy as np
import jax.numpy as jnp

from ppac_jax.ops import geometry as geo

__all__ = ["resize_bilinear", "bilinear_taps"]


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


def _resize_axis(x, axis: int, n_out: int, align_corners: bool):
    n_in = x.shape[axis]
    if n_in == n_out:
        return x
    i0, i1, w1 = bilinear_taps(n_in, n_out, align_corners=align_corners)
    shape = [1] * x.ndim
    shape[axis] = n_out
    w1 = jnp.asarray(w1.reshape(shape), x.dtype)
    return (jnp.take(x, jnp.asarray(i0), axis=axis) * (1 - w1)
            + jnp.take(x, jnp.asarray(i1), axis=axis) * w1)


def resize_bilinear(x, size, *, align_corners: bool = False):
    """Bilinear resize of ``x [B, H, W, C]`` to ``size = (Ho, Wo)``.

    Equals PyTorch ``F.interpolate(x, size, mode="bilinear", align_corners=...)`` (separable,
    2 taps per axis, border samples clamped, no anti-aliasing when down-scaling: a 2x
    down-scale averages the two middle samples of each pair). An axis whose size does not
    change is returned as is.

    Args:
      x: ``[B, H, W, C]`` floating array.
      size: ``(Ho, Wo)`` positive ints.
      align_corners: PyTorch's flag.

    Returns:
      ``[B, Ho, Wo, C]`` in ``x``'s dtype.

    Raises:
      ValueError: ``x`` not rank 4 or ``size`` not two positive ints.
    """
    geo.check_rank(x, 4, "x", "B, H, W, C")
    size = geo.check_positive(size, "size")
    x = _resize_axis(x, 1, size[0], align_corners)
    return _resize_axis(x, 2, size[1], align_corners)
