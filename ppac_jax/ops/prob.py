"""Probabilistic (confidence-weighted) and normalised PAC, as in PPAC refinement networks."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from ppac_jax.ops import geometry as geo
from ppac_jax.ops.pac import _add_bias, pac_conv2d
from ppac_jax.ops.precision import matmul_precision

# Lower bound of the normaliser (reference value).
_MIN_DENOMINATOR = 1e-20


def prob_pac_conv2d(x, confidence, kernel, weight, weight_norm, bias=None, *, stride=1,
                    padding=0, dilation=1, shared_filters=False, impl="auto", tiling=None):
    """Confidence-weighted PAC: ``pac(x * c, K, W) / max(pac(c, K, exp(W_norm)), 1e-20) + bias``.

    The denominator sums ``K * c * exp(W_norm)`` over the window taps (and, without
    ``shared_filters``, over the input channels). Out-of-image taps have confidence 0.

    Args:
      x: ``[B, H, W, Cin]`` estimate to refine.
      confidence: ``[B, H, W, 1]`` confidence of ``x`` in ``[0, 1]``.
      kernel: ``[B, Ho, Wo, kh, kw]`` adapting kernel (e.g. ``pac_kernel(guide, k, padding=p)``).
      weight: ``[kh, kw, Cin, Cout]`` or ``[kh, kw, 1, 1]`` when ``shared_filters``.
      weight_norm: log-weights of the normaliser, same shape as ``weight``.
      bias: optional ``[Cout]``.
      stride, padding, dilation, shared_filters, impl, tiling: as in
        :func:`ppac_jax.ops.pac_conv2d`.

    Returns:
      ``[B, Ho, Wo, Cout]``.
    """
    check_confidence(x, confidence)
    _check_weight_norm(weight, weight_norm)
    options = dict(stride=stride, padding=padding, dilation=dilation, impl=impl, tiling=tiling)
    numerator = pac_conv2d(x * confidence, kernel, weight, shared_filters=shared_filters, **options)
    denominator = pac_conv2d(confidence, kernel, _summed_exp(weight_norm), **options)
    return _divide(numerator, denominator, bias)


def normalized_pac_conv2d(x, kernel, weight, weight_norm, bias=None, *, stride=1, padding=0,
                          dilation=1, shared_filters=False, impl="auto", tiling=None):
    """Normalised PAC: ``pac(x, K, W) / max(sum_t K_t * exp(W_norm)_t, 1e-20) + bias``.

    Unlike :func:`prob_pac_conv2d` the denominator counts every tap of the kernel, including
    taps outside the image (as the reference does).

    Args:
      x: ``[B, H, W, Cin]``.
      kernel: ``[B, Ho, Wo, kh, kw]``.
      weight, weight_norm: ``[kh, kw, Cin, Cout]`` (or ``[kh, kw, 1, 1]`` when
        ``shared_filters``).
      bias: optional ``[Cout]``.
      stride, padding, dilation, shared_filters, impl, tiling: as in
        :func:`ppac_jax.ops.pac_conv2d` (the denominator is one contraction, no loop).

    Returns:
      ``[B, Ho, Wo, Cout]``.
    """
    _check_weight_norm(weight, weight_norm)
    numerator = pac_conv2d(x, kernel, weight, stride=stride, padding=padding, dilation=dilation,
                           shared_filters=shared_filters, impl=impl, tiling=tiling)
    if kernel.ndim != 5:
        raise ValueError(f"kernel must be [B, Ho, Wo, kh, kw], got {kernel.shape}")
    norm_weight = _summed_exp(weight_norm)[:, :, 0, :]      # [kh, kw, O]
    denominator = jnp.einsum("bhwij,ijo->bhwo", kernel, norm_weight.astype(kernel.dtype),
                             precision=matmul_precision())
    return _divide(numerator, denominator, bias)


def check_confidence(x, confidence):
    """Validate ``x`` ``[B, H, W, C]`` and its confidence ``[B, H, W, 1]``."""
    geo.check_rank(x, 4, "x", "B, H, W, Cin")
    geo.check_rank(confidence, 4, "confidence", "B, H, W, 1")
    if confidence.shape != (*x.shape[:3], 1):
        raise ValueError(f"confidence must have shape {(*x.shape[:3], 1)}, got {confidence.shape}")


def _check_weight_norm(weight, weight_norm):
    if getattr(weight_norm, "shape", None) != weight.shape:
        raise ValueError(f"weight_norm must have the shape of weight {weight.shape}, "
                         f"got {getattr(weight_norm, 'shape', None)}")


def _summed_exp(weight_norm):
    """``exp(weight_norm)`` summed over input channels: ``[kh, kw, 1, Cout or 1]``."""
    return jnp.sum(jnp.exp(weight_norm), axis=2, keepdims=True)


@jax.custom_jvp
def _safe_divide(numerator, denominator):
    return numerator / denominator


@_safe_divide.defjvp
def _safe_divide_jvp(primals, tangents):
    # d(n/d) = (dn - (n/d) dd) / d. The default rule forms d**-2, which for a float32
    # denominator near the 1e-20 floor underflows (CPU flushes denormals) and gives inf * 0 = NaN.
    numerator, denominator = primals
    d_num, d_den = tangents
    out = numerator / denominator
    return out, (d_num - out * d_den) / denominator


def _divide(numerator, denominator, bias):
    return _add_bias(_safe_divide(
        numerator, jnp.maximum(denominator, _MIN_DENOMINATOR).astype(numerator.dtype)), bias)
