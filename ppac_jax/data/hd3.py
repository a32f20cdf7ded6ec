"""HD3 match-density confidences at full resolution (visinf/ppac_refinement ``src/prob_utils.py``).

HD3 predicts, per pyramid level ``l``, a flow (already resized to the full image) and the logits
of a match density over the ``(2r+1)^2`` displacements of its residual at that level's grid.
PPAC's confidence for level ``l`` is the density, upsampled to full resolution, read at the
displacement HD3 actually chose (SPEC_wave2 3.7).
"""

from __future__ import annotations

import math
from typing import Sequence

import jax
import jax.numpy as jnp

from ppac_jax.ops.resample import resize_bilinear

__all__ = ["interpolate_probabilities", "get_upsampled_probabilities_hd3"]


def interpolate_probabilities(flow, prob, radius: int):
    """Read a match density at a displacement (``prob_utils.interpolate_probabilities``).

    Args:
      flow: ``[B, H, W, 2]`` residual displacement (u, v) in the density's grid units; clamped
        to ``[-radius, radius]`` and rounded half to even (``torch.round``).
      prob: ``[B, H, W, (2r+1)^2]`` probabilities, displacement index ``(v + r)(2r+1) + (u + r)``.
      radius: ``r``.

    Returns:
      ``[B, H, W]`` the probability at the rounded displacement (no gradient to ``flow``).
    """
    side = 2 * radius + 1
    d = jnp.round(jnp.clip(jax.lax.stop_gradient(flow), -radius, radius))
    index = ((d[..., 1] + radius) * side + (d[..., 0] + radius)).astype(jnp.int32)
    return jnp.take_along_axis(prob, index[..., None], axis=-1)[..., 0]


def get_upsampled_probabilities_hd3(full_vect: Sequence, full_prob: Sequence, *,
                                    dtype=jnp.float32):
    """Per-level confidences of HD3 at full resolution (``prob_utils.get_upsampled_probabilities_hd3``).

    For level ``l``: ``P = softmax(bilinear_align_corners(full_prob[l] -> (H, W)))`` over the
    displacements; the residual ``d = full_vect[l] - full_vect[l-1]`` (``full_vect[-1] = 0``) is
    scaled to the level's grid (``u * w_l / W``, ``v * h_l / H``), clamped to ``[-r, r]``,
    rounded half to even, and ``P`` is read there (:func:`interpolate_probabilities`).

    Args:
      full_vect: ``L`` flows ``[B, H, W, 2]`` (u, v), level ``l`` already at full resolution, in
        full-resolution pixels.
      full_prob: ``L`` match-density logits ``[B, h_l, w_l, D]``, ``D = (2r+1)^2`` (HD3: r = 4).
      dtype: output dtype; float32 as the original's buffer (also for float64 inputs), ``None``
        for the inputs' dtype.

    Returns:
      ``[B, H, W, L]`` confidences in [0, 1]; differentiable w.r.t. ``full_prob`` only (the
      rounding and gather cut ``full_vect``).

    Raises:
      ValueError: the lists are empty or of different lengths, shapes disagree, or ``D`` is not
        an odd square.
    """
    full_vect = [jnp.asarray(v) for v in full_vect]
    full_prob = [jnp.asarray(p) for p in full_prob]
    if not full_vect or len(full_vect) != len(full_prob):
        raise ValueError(f"full_vect and full_prob: expected two non-empty lists of equal length, "
                         f"got {len(full_vect)} and {len(full_prob)}")
    b, height, width = full_vect[0].shape[:3]
    for l, (v, p) in enumerate(zip(full_vect, full_prob)):
        if v.shape != (b, height, width, 2):
            raise ValueError(f"full_vect[{l}]: expected shape {(b, height, width, 2)}, got {v.shape}")
        if p.ndim != 4 or p.shape[0] != b:
            raise ValueError(f"full_prob[{l}]: expected [{b}, h, w, D], got {p.shape}")
    d = full_prob[0].shape[-1]
    radius = math.isqrt(d) // 2
    if (2 * radius + 1) ** 2 != d or any(p.shape[-1] != d for p in full_prob):
        raise ValueError(f"full_prob: every level needs D = (2r+1)^2 displacement channels, got "
                         f"{[p.shape[-1] for p in full_prob]}")
    out = []
    previous = jnp.zeros_like(full_vect[0])
    for vect, prob in zip(full_vect, full_prob):
        h_l, w_l = prob.shape[1:3]
        p = jax.nn.softmax(resize_bilinear(prob, (height, width), align_corners=True), axis=-1)
        residual = (vect - previous) * jnp.asarray([w_l / width, h_l / height], vect.dtype)
        out.append(interpolate_probabilities(residual, p, radius))
        previous = vect
    result = jnp.stack(out, axis=-1)
    return result if dtype is None else result.astype(dtype)
