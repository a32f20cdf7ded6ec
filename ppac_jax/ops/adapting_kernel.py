"""``pac_kernel``: the adapting kernel of a guide, written out (PAC, Su et al. CVPR 2019, eq. 3).

The summed-distance kernel of a large guide is the tap-loop engine's "write the kernel out"
contraction (:func:`ppac_jax.ops.tap_loop.window_kernel`: planar guide, row strips, one custom
VJP); small or channel-wise kernels are stacked from channels-last tap slices of the guide and
differentiated by plain autodiff. Masks and normalisation are applied to the written-out kernel.
"""

from __future__ import annotations

from typing import Optional, Tuple

import jax
import jax.numpy as jnp
from jax import lax

from ppac_jax.ops import geometry as geo
from ppac_jax.ops import tap_loop
from ppac_jax.ops.kernel import KernelSpec, compute_dtype, kernel_spec
from ppac_jax.ops.precision import matmul_precision
from ppac_jax.ops.tiling import check_tiling, choose_tiling

# Cap of a shifted log-kernel (taps outside the shift's maximum only): e^50 is finite in float32.
_MAX_SHIFTED_LOG = 50.0


def pac_kernel(guide, kernel_size, *, stride=1, padding=0, dilation=1, output_padding=0,
               transposed=False, kernel_type="gaussian", asym=False, inv_alpha=None,
               inv_lambda=None, smooth_kernel=None, channel_wise=False, normalize=False,
               mask=None, tiling=None) -> Tuple[jax.Array, Optional[jax.Array]]:
    """Adapting kernel of a PAC op, computed from guidance features.

    For output position i and window tap j, with squared feature distance
    ``x = sum_c (relu if asym)(f_j - f_i)_c ** 2`` (per channel if ``channel_wise``)::

        gaussian:  K = exp(-x / 2)
        inv:       K = inv_alpha + (x + 1e-4) ** (inv_lambda / 2)

    (``inv`` grows with distance: this is the reference's formula, kept for checkpoint parity.)
    The guidance is zero padded, so out-of-image taps see feature 0 unless ``mask`` or
    ``normalize`` removes them.

    Args:
      guide: ``[B, H, W, D]`` guidance features. For ``transposed=True`` they live on the
        *output* grid of the transposed convolution.
      kernel_size: odd int or pair ``(kh, kw)``.
      stride, padding, dilation, output_padding: geometry of the PAC op the kernel is for
        (ints or pairs; ``output_padding`` is ignored unless ``transposed``, as in the original).
      transposed: build the kernel of a transposed PAC op.
      kernel_type: ``"gaussian"`` or ``"inv"``.
      asym: keep only positive feature differences (``relu``) before squaring.
      inv_alpha, inv_lambda: required for ``"inv"``; shape ``()``, or ``[D]`` when
        ``channel_wise``. Differentiable.
      smooth_kernel: optional ``[sh, sw]`` (odd) filter; the centre feature f_i becomes the guide
        cross-correlated with it (zero padding) at the window centre.
      channel_wise: keep one kernel per guidance channel.
      normalize: divide by the kernel's sum over the window (taps outside the input excluded).
        A gaussian kernel is then normalised in a stable form, ``exp(l_t - max l) / sum(...)``
        with ``l = -x / 2`` (equal in exact arithmetic): float32 values and gradients stay
        finite where the raw window sum underflows (costs one max over the kernel's window).
      mask: optional ``[B, h_in, w_in, 1]`` 0/1 validity of the op's *input* samples (for
        ``transposed`` the low-resolution grid). Invalid taps get K = 0; without ``normalize``
        K is rescaled by the inverse fraction of valid taps.
      tiling: loop layout, :class:`~ppac_jax.ops.tiling.Tiling` (default: from the shapes).

    Computation is in float32 (or float64) even for half-precision guides; the results have the
    guide's dtype.

    Returns:
      ``(kernel, output_mask)``: kernel ``[B, Ho, Wo, kh, kw]`` (``[B, Ho, Wo, kh, kw, D]`` when
      ``channel_wise``); output_mask ``[B, Ho, Wo, 1]`` (``[..., D]`` channel-wise) float 0/1,
      0 where a window holds no valid sample, or ``None`` when no ``mask`` is given.
    """
    geo.check_rank(guide, 4, "guide", "B, H, W, D")
    win = geo.window(guide.shape[1:3], kernel_size, stride=stride, padding=padding,
                     dilation=dilation, output_padding=output_padding, transposed=transposed,
                     output_grid=True, name="guide")
    batch, _, _, depth = guide.shape
    in_size, out_size = win.in_size, win.out_size
    spec, params = kernel_spec(kernel_type, asym=asym, inv_alpha=inv_alpha,
                               inv_lambda=inv_lambda, depth=depth, channel_wise=channel_wise,
                               normalize=normalize)

    if mask is not None:
        check_mask(mask, batch, win)

    out_dtype = jnp.result_type(guide)
    dtype = compute_dtype(guide, smooth_kernel, *params)
    guide = guide.astype(dtype)
    # A normalised gaussian kernel is built from its exponent (see _normalized_exp).
    log_domain = spec.log_domain
    tiling = check_tiling(tiling)
    if tiling is None:
        tiling = choose_tiling("kernel", batch=batch, out_size=out_size, channels=depth,
                               itemsize=dtype.itemsize, dense=channel_wise)
    if channel_wise or not tiling.planar:
        kern = _sliced_kernel(guide, win, smooth_kernel, spec, params)
    else:
        kern = _planar_kernel(guide, win, smooth_kernel, spec, params, tiling)

    output_mask = None
    if mask is not None or normalize:
        pattern = _input_taps(jnp.ones((1, *in_size, 1), dtype), win)
        valid = pattern if mask is None else _input_taps(mask.astype(dtype), win)
        v = valid[..., None] if channel_wise else valid
        kern = _normalized_exp(kern, v) if log_domain else kern * v
        if normalize and not log_domain:
            norm = jnp.sum(kern, axis=(3, 4), keepdims=True)
            kern = kern / (norm + (norm == 0).astype(dtype))
        if mask is not None:
            ratio = valid_fraction(jnp.sum(valid, axis=(3, 4)), jnp.sum(pattern, axis=(3, 4)))
            ratio = jnp.broadcast_to(ratio, (batch, *out_size))
            if not normalize:
                r = ratio[:, :, :, None, None, None] if channel_wise else ratio[..., None, None]
                kern = kern / (r + (r == 0).astype(dtype))
            output_mask = (ratio != 0).astype(dtype)[..., None]
            if channel_wise:
                output_mask = jnp.broadcast_to(output_mask, (batch, *out_size, depth))
    return kern.astype(out_dtype), (None if output_mask is None else output_mask.astype(out_dtype))


def check_mask(mask, batch: int, win: geo.Window):
    """Raise ``ValueError`` unless ``mask`` is ``[B, h_in, w_in, 1]`` on the op's input grid."""
    geo.check_rank(mask, 4, "mask", "B, h_in, w_in, 1")
    if mask.shape != (batch, *win.in_size, 1):
        raise ValueError(f"mask must have shape {(batch, *win.in_size, 1)} (the op's input "
                         f"grid), got {mask.shape}")


def valid_fraction(valid_count, real_count):
    """The fraction of a window's real (in-image) taps that a mask marks valid, by which an
    unnormalised masked kernel is rescaled; 0 (not 0/0) for a window without a real tap."""
    return jnp.where(real_count == 0, 0, valid_count / jnp.where(real_count == 0, 1, real_count))


def _normalized_exp(log_kernel, valid):
    """``valid * exp(l) / sum_window(valid * exp(l))`` (0 for a window without a valid tap),
    computed as ``exp(l - m)`` with ``m`` the window maximum of ``l`` over the valid taps: the
    largest valid tap is 1, so the sum neither underflows nor is squared to 0 in the gradient.
    ``m`` is held constant (the ratio does not depend on it). Taps with ``valid == 0`` are
    capped at ``e^50`` times the largest valid one (no overflow; only their gradient w.r.t.
    ``valid`` saturates beyond that ratio). Axes 3, 4 are the window."""
    low = jnp.asarray(-jnp.inf, log_kernel.dtype)
    peak = jnp.max(jnp.where(valid > 0, log_kernel, low), axis=(3, 4), keepdims=True)
    peak = lax.stop_gradient(jnp.where(jnp.isfinite(peak), peak, jnp.zeros((), peak.dtype)))
    kern = valid * jnp.exp(jnp.minimum(log_kernel - peak, _MAX_SHIFTED_LOG))
    norm = jnp.sum(kern, axis=(3, 4), keepdims=True)
    return kern / (norm + (norm == 0).astype(norm.dtype))


def centre_features(guide, guide_padded, win: geo.Window, smooth_kernel=None):
    """The centre feature f_i of every window: ``[B, Ho, Wo, D]``.

    ``guide_padded`` is ``win.pad_guide(guide)``. With ``smooth_kernel`` (``[sh, sw]``, odd;
    ``ValueError`` otherwise) the centre is the guide cross-correlated with it (zero padding)
    at the window centre.
    """
    if smooth_kernel is None:
        return win.tap_slice(guide_padded, win.centre)
    smooth_kernel = jnp.asarray(smooth_kernel, guide.dtype)
    sk = smooth_kernel.shape
    if len(sk) != 2 or sk[0] % 2 == 0 or sk[1] % 2 == 0:
        raise ValueError(f"smooth_kernel must be a 2-D array of odd size [sh, sw], "
                         f"got shape {sk}")
    depth = guide.shape[-1]
    padded = geo.pad_spatial(guide, win.centre_filter_pads(sk, guide.shape[1:3]))
    rhs = jnp.broadcast_to(smooth_kernel[:, :, None, None], (*sk, 1, depth))
    return lax.conv_general_dilated(
        padded, rhs, win.tap_stride, "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC"),
        feature_group_count=depth, precision=matmul_precision())


def _input_taps(values, win: geo.Window):
    """Per-window view of a ``[B', h_in, w_in, 1]`` map on the op's input grid.

    Taps outside the input (and, for transposed ops, on inserted zeros) read 0.
    Returns ``[B', Ho, Wo, kh, kw]``.
    """
    padded = win.pad_input(values)
    cols = jnp.stack([win.tap_slice(padded, tap)[..., 0] for tap in geo.taps(win.kernel_size)],
                     axis=3)
    return cols.reshape(values.shape[0], *win.out_size, *win.kernel_size)


def _sliced_kernel(guide, win: geo.Window, smooth_kernel, spec: KernelSpec, params):
    """``[B, Ho, Wo, kh, kw(, D)]`` from ``kh * kw`` channels-last tap slices of the guide."""
    guide_padded = win.pad_guide(guide)
    centre = centre_features(guide, guide_padded, win, smooth_kernel)
    values = [spec.distance(win.tap_slice(guide_padded, tap), centre)
              for tap in geo.taps(win.kernel_size)]
    dist = jnp.stack(values, axis=3)
    dist = dist.reshape(guide.shape[0], *win.out_size, *win.kernel_size, *dist.shape[4:])
    return spec.value(dist, params, log=spec.log_domain)


def _planar_kernel(guide, win: geo.Window, smooth_kernel, spec: KernelSpec, params, tiling):
    """``[B, Ho, Wo, kh, kw]`` kernel of summed feature distances (not channel-wise), from the
    engine on guide planes (fast where a channels-last guide with few channels is not)."""
    padded = win.pad_guide(guide)
    # Without smoothing the centre is a tap of the padded guide: read it inside the loop.
    centre = None if smooth_kernel is None else centre_features(guide, padded, win,
                                                                smooth_kernel)
    plan = tap_loop.Plan(win, dense=False, fused=True, kernel=spec,
                         centre_tap=win.centre_tap if centre is None else -1)
    params = tuple(q.astype(guide.dtype) for q in params)
    kern = tap_loop.window_kernel(geo.phase_split(padded, win.tap_stride), centre, params,
                                  plan, tiling)
    # Outside the engine's custom VJP, so that XLA cancels this against a tap-major consumer's
    # transpose (ops.pac_conv2d's loop), forward and backward.
    batch = guide.shape[0]
    return jnp.transpose(kern, (1, 2, 3, 0)).reshape(batch, *win.out_size, *win.kernel_size)
