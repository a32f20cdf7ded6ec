"""The adapting kernel's description and formulas: K(f_i, f_j) of pixel-adaptive convolution.

:class:`KernelSpec` (built and validated by :func:`kernel_spec`) is the only place the formulas
are written; the loops that evaluate them over windows are in :mod:`ppac_jax.ops.tap_loop`.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp

KERNEL_TYPES = ("gaussian", "inv")
# Internal kernel type: the gaussian's exponent -x / 2 (for stable normalisation).
_LOG_GAUSSIAN = "log_gaussian"
# Added to the squared distance of `inv` kernels before the power (reference value).
_INV_EPS = 1e-4
# Floor of a shifted distance: exp(-_SHIFT_FLOOR / 2) = e^50 stays finite in float32.
_SHIFT_FLOOR = -100.0


def compute_dtype(*arrays):
    """float32 for half-precision inputs, otherwise the inputs' (promoted) float type."""
    dtype = jnp.result_type(*[a for a in arrays if a is not None])
    if not jnp.issubdtype(dtype, jnp.floating):
        dtype = jnp.float32
    return jnp.promote_types(dtype, jnp.float32)


class KernelSpec(NamedTuple):
    """The formula of one adapting kernel (static, hashable; built by :func:`kernel_spec`).

    With ``x = sum_c (relu if asym)(f_j - f_i)_c ** 2`` (per channel if ``channel_wise``),
    ``K = exp(-x / 2)`` (gaussian) or ``inv_alpha + (x + 1e-4) ** (inv_lambda / 2)`` (inv);
    ``normalize`` divides K by its window sum (a gaussian then from its exponent,
    :attr:`log_domain`). The parameters ``(inv_alpha, inv_lambda)`` are arrays and travel
    beside the spec as ``params`` (``()`` for a gaussian).
    """
    kernel_type: str = "gaussian"
    asym: bool = False
    channel_wise: bool = False
    normalize: bool = False

    @property
    def log_domain(self) -> bool:
        return self.normalize and self.kernel_type == "gaussian"

    def distance(self, features, centre, shift=None):
        """``x`` of one tap (:func:`tap_distance`); with ``shift``, ``x - shift``. Counted taps
        have ``x >= shift`` up to rounding (no comparison here: it would cut the gradient of
        the window's nearest tap); the floor only keeps taps that the shift did not count
        from overflowing ``exp``."""
        dist = tap_distance(features, centre, asym=self.asym, channel_wise=self.channel_wise)
        if shift is None:
            return dist
        return jnp.maximum(dist - shift, jnp.asarray(_SHIFT_FLOOR, dist.dtype))

    def value(self, dist, params=(), *, log=False):
        """``K`` from ``x``; ``log``: the gaussian's exponent ``-x / 2`` instead."""
        return kernel_from_distance(dist, _LOG_GAUSSIAN if log else self.kernel_type, *params)


def kernel_spec(kernel_type="gaussian", *, asym=False, inv_alpha=None, inv_lambda=None,
                depth: int, channel_wise=False, normalize=False):
    """Validated ``(KernelSpec, params)`` for a guide with ``depth`` channels; ``params`` is
    ``()`` or ``(inv_alpha, inv_lambda)`` (shape ``()``, or ``[D]`` when ``channel_wise``).
    Raises ``ValueError`` naming the bad argument."""
    if kernel_type not in KERNEL_TYPES:
        raise ValueError(f"kernel_type must be one of {KERNEL_TYPES}, got {kernel_type!r}")
    params = ()
    if kernel_type == "inv":
        if inv_alpha is None or inv_lambda is None:
            raise ValueError('kernel_type="inv" requires inv_alpha and inv_lambda')
        params = (_check_inv_param(inv_alpha, "inv_alpha", depth, channel_wise),
                  _check_inv_param(inv_lambda, "inv_lambda", depth, channel_wise))
    return KernelSpec(kernel_type, bool(asym), bool(channel_wise), bool(normalize)), params


def tap_distance(features, centre, *, asym=False, channel_wise=False):
    """Squared feature distance of one window tap: ``sum_c (relu if asym)(f_j - f_i)_c ** 2``.

    features (the tap's guide samples) and centre: ``[B, Ho, Wo, D]`` -> ``[B, Ho, Wo]``
    (``[B, Ho, Wo, D]`` when ``channel_wise``). Both may instead be equal-length sequences of
    per-channel arrays (the planar layout), summed channel by channel (a list of squares when
    ``channel_wise``).
    """
    if isinstance(features, (list, tuple)):
        squares = [tap_distance(f, c, asym=asym, channel_wise=True)
                   for f, c in zip(features, centre)]
        return squares if channel_wise else functools.reduce(jnp.add, squares)
    diff = features - centre
    if asym:
        diff = jax.nn.relu(diff)
    sq = diff * diff
    return sq if channel_wise else jnp.sum(sq, axis=-1)


def kernel_from_distance(dist, kernel_type, inv_alpha=None, inv_lambda=None):
    """Kernel value (the formulas of :class:`KernelSpec`; internally also the gaussian's
    exponent) from a squared distance of any shape."""
    if kernel_type == "gaussian":
        return jnp.exp(-0.5 * dist)
    if kernel_type == _LOG_GAUSSIAN:
        return -0.5 * dist
    return inv_alpha + (dist + _INV_EPS) ** (0.5 * inv_lambda)


def _check_inv_param(value, name, depth, channel_wise):
    value = jnp.asarray(value)
    if value.shape == () or (channel_wise and value.shape == (depth,)):
        return value
    allowed = "() or [D]" if channel_wise else "()"
    raise ValueError(f"{name} must have shape {allowed} (D = {depth} guide channels), "
                     f"got {value.shape}")
