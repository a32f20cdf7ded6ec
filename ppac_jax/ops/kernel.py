"""The adapting kernel K(f_i, f_j) of pixel-adaptive convolution."""

from __future__ import annotations

import functools
from typing import NamedTuple, Optional, Tuple

import jax
import jax.numpy as jnp
from jax import lax

from ppac_jax.ops import autodiff
from ppac_jax.ops import geometry as geo
from ppac_jax.ops.precision import matmul_precision
from ppac_jax.ops.tiling import choose_tiling

KERNEL_TYPES = ("gaussian", "inv")
# Internal kernel type: the gaussian's exponent -x / 2 (for stable normalisation).
_LOG_GAUSSIAN = "log_gaussian"
# Cap of a shifted log-kernel (taps outside the shift's maximum only): e^50 is finite in float32.
_MAX_SHIFTED_LOG = 50.0
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


def pac_kernel(guide, kernel_size, *, stride=1, padding=0, dilation=1, output_padding=0,
               transposed=False, kernel_type="gaussian", asym=False, inv_alpha=None,
               inv_lambda=None, smooth_kernel=None, channel_wise=False, normalize=False,
               mask=None) -> Tuple[jax.Array, Optional[jax.Array]]:
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

    Computation is in float32 (or float64) even for half-precision guides; the results have the
    guide's dtype.

    Returns:
      ``(kernel, output_mask)``: kernel ``[B, Ho, Wo, kh, kw]`` (``[B, Ho, Wo, kh, kw, D]`` when
      ``channel_wise``); output_mask ``[B, Ho, Wo, 1]`` (``[..., D]`` channel-wise) float 0/1,
      0 where a window holds no valid sample, or ``None`` when no ``mask`` is given.
    """
    return _pac_kernel(**locals())


def _pac_kernel(guide, kernel_size, *, stride=1, padding=0, dilation=1, output_padding=0,
                transposed=False, kernel_type="gaussian", asym=False, inv_alpha=None,
                inv_lambda=None, smooth_kernel=None, channel_wise=False, normalize=False,
                mask=None, tiling=None):
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
        geo.check_rank(mask, 4, "mask", "B, h_in, w_in, 1")
        if mask.shape != (batch, *in_size, 1):
            raise ValueError(f"mask must have shape {(batch, *in_size, 1)} (the op's input grid), "
                             f"got {mask.shape}")

    out_dtype = jnp.result_type(guide)
    dtype = compute_dtype(guide, smooth_kernel, *params)
    guide = guide.astype(dtype)
    # A normalised gaussian kernel is built from its exponent (see _normalized_exp).
    log_domain = spec.log_domain
    if tiling is None:
        tiling = choose_tiling("kernel", batch=batch, out_size=out_size, channels=depth,
                               itemsize=dtype.itemsize, dense=channel_wise)
    if channel_wise or not tiling.planar:
        kern = _sliced_kernel(guide, win, smooth_kernel, spec, params)
    else:
        kern = _planar_kernel(guide, win, smooth_kernel, spec, params, tiling.rows)

    output_mask = None
    if mask is not None or normalize:
        pattern = _input_taps(jnp.ones((1, *in_size, 1), dtype), win)
        valid = pattern if mask is None else _input_taps(mask.astype(dtype), win)
        if log_domain:
            kern = _normalized_exp(kern, valid[..., None] if channel_wise else valid)
        else:
            kern = kern * (valid[..., None] if channel_wise else valid)
        if normalize and not log_domain:
            norm = jnp.sum(kern, axis=(3, 4), keepdims=True)
            kern = kern / (norm + (norm == 0).astype(dtype))
        if mask is not None:
            valid_count = jnp.sum(valid, axis=(3, 4))
            real_count = jnp.sum(pattern, axis=(3, 4))
            # Fraction of real taps that are valid; 0 (not 0/0) for windows with no real tap.
            ratio = jnp.where(real_count == 0, 0,
                              valid_count / jnp.where(real_count == 0, 1, real_count))
            ratio = jnp.broadcast_to(ratio, (batch, *out_size))
            if not normalize:
                r = ratio[:, :, :, None, None]
                r = r[..., None] if channel_wise else r
                kern = kern / (r + (r == 0).astype(dtype))
            output_mask = (ratio != 0).astype(dtype)[..., None]
            if channel_wise:
                output_mask = jnp.broadcast_to(output_mask, (batch, *out_size, depth))
    kern = kern.astype(out_dtype)
    if output_mask is not None:
        output_mask = output_mask.astype(out_dtype)
    return kern, output_mask


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
    """Kernel value from a squared distance (any shape): ``exp(-x / 2)`` or
    ``inv_alpha + (x + 1e-4) ** (inv_lambda / 2)`` (internally also the gaussian's exponent)."""
    if kernel_type == "gaussian":
        return jnp.exp(-0.5 * dist)
    if kernel_type == _LOG_GAUSSIAN:
        return -0.5 * dist
    return inv_alpha + (dist + _INV_EPS) ** (0.5 * inv_lambda)


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

    ``guide_padded`` is ``win.pad_guide(guide)``. With ``smooth_kernel`` (``[sh, sw]``, odd)
    the centre is the guide cross-correlated with it (zero padding) at the window centre.
    """
    if smooth_kernel is None:
        return win.tap_slice(guide_padded, win.centre)
    return _smoothed_centre(guide, jnp.asarray(smooth_kernel, guide.dtype), win)


def parse_kernel_type(name: str) -> dict:
    """Parse the original's kernel-type strings.

    ``"gaussian"`` -> ``{"kernel_type": "gaussian", "asym": False, ...}``;
    ``"inv_{alpha}_{lambda}[_asym][_fixed]"`` -> ``kernel_type="inv"`` with ``inv_alpha``,
    ``inv_lambda`` (floats, the initial values), ``asym`` and ``fixed`` (not learnable).
    """
    parts = name.split("_")
    if parts == ["gaussian"]:
        return dict(kernel_type="gaussian", asym=False, fixed=False, inv_alpha=None,
                    inv_lambda=None)
    if parts[0] == "inv" and len(parts) >= 3 and set(parts[3:]) <= {"asym", "fixed"}:
        try:
            alpha, lam = float(parts[1]), float(parts[2])
        except ValueError:
            alpha = lam = None
        if alpha is not None:
            return dict(kernel_type="inv", asym="asym" in parts[3:], fixed="fixed" in parts[3:],
                        inv_alpha=alpha, inv_lambda=lam)
    raise ValueError(f'kernel_type must be "gaussian" or "inv_{{alpha}}_{{lambda}}[_asym][_fixed]", '
                     f"got {name!r}")


def _check_inv_param(value, name, depth, channel_wise):
    value = jnp.asarray(value)
    if value.shape == () or (channel_wise and value.shape == (depth,)):
        return value
    allowed = "() or [D]" if channel_wise else "()"
    raise ValueError(f"{name} must have shape {allowed} (D = {depth} guide channels), "
                     f"got {value.shape}")


def _smoothed_centre(guide, smooth_kernel, win: geo.Window):
    """Guide cross-correlated with ``smooth_kernel`` (zero padding) at the window centres.

    guide ``[B, H, W, D]`` -> ``[B, Ho, Wo, D]``.
    """
    if smooth_kernel.ndim != 2 or smooth_kernel.shape[0] % 2 == 0 or smooth_kernel.shape[1] % 2 == 0:
        raise ValueError(f"smooth_kernel must be a 2-D array of odd size [sh, sw], "
                         f"got shape {smooth_kernel.shape}")
    sk = smooth_kernel.shape
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


# --------------------------------------------------------------------------------------------
# The summed-distance kernel, computed tap by tap on a planar guide.
#
# Channels-last features with few channels (D = 3..8) vectorise poorly on CPU, and slicing
# kh * kw shifted copies of the guide costs kh * kw full-size pads in the backward pass. Here
# the guide is planar ([D, B, H, W], split into stride phases) and a fori_loop walks over row
# strips of the output and, inside a strip, over the taps (one tap a step: unrolled taps make
# giant, slow fusions on XLA CPU), so that a strip's guide rows stay in cache. The result is
# written tap-major, [T, B, Ho, Wo]; the custom VJP recomputes every tap and accumulates the
# guide gradient in place. Measured on a 2-core CPU, 436x1024 guide with D = 5, 7x7: about
# 5x faster forward and 3x faster forward+backward than slicing channels-last taps.

class _KernelPlan(NamedTuple):
    """Static description of one planar kernel computation (hashable)."""
    window: geo.Window
    kernel: KernelSpec
    rows: int


def _planar_kernel(guide, win: geo.Window, smooth_kernel, spec: KernelSpec, params, rows):
    """``[B, Ho, Wo, kh, kw]`` kernel of summed feature distances (not channel-wise)."""
    batch, height, width, depth = guide.shape
    dtype = guide.dtype
    # Channels become batch entries of a one-channel NHWC image: [D * B, H, W, 1].
    planes = jnp.transpose(guide, (3, 0, 1, 2)).reshape(depth * batch, height, width, 1)
    padded = win.pad_guide(planes)
    centre = centre_features(planes, padded, win, smooth_kernel)
    centre = centre.reshape(depth, batch, *win.out_size)
    phases = geo.phase_split(padded, win.tap_stride)
    phases = phases.reshape(*phases.shape[:2], depth, batch, *phases.shape[3:5])
    params = tuple(q.astype(dtype) for q in params)
    plan = _KernelPlan(win, spec, min(rows or win.out_size[0], win.out_size[0]))
    kern = _kernel_taps(phases, centre, params, plan)
    # Outside the custom VJP, so that XLA cancels this against a tap-major consumer's transpose
    # (ops.pac_conv2d's loop), forward and backward.
    return jnp.transpose(kern, (1, 2, 3, 0)).reshape(batch, *win.out_size, *win.kernel_size)


def _tap_value(windows, centres, params, plan: _KernelPlan):
    """Kernel value of one tap from per-channel samples and centres (``D`` arrays each)."""
    return plan.kernel.value(plan.kernel.distance(windows, centres), params,
                             log=plan.kernel.log_domain)


def _tap_start(t, channel, plan: _KernelPlan):
    """Start of channel ``channel`` of tap ``t`` (traced) in ``[sh, sw, D, B, rows, cols]``."""
    t = jnp.asarray(t, jnp.int32)
    zero = jnp.zeros((), jnp.int32)
    ph, pw, row, col = plan.window.tap_start(t)
    return (ph, pw, jnp.asarray(channel, jnp.int32), zero, row, col)


def _tap_windows(phases, t, rows, plan: _KernelPlan):
    """The samples of tap ``t``: one ``[B, rows, Wo]`` array per channel.

    One slice per channel: XLA CPU runs the per-channel sum of the distance as plain
    vectorised loops then, 2x faster than a reduction over a channel axis (measured).
    """
    size = (1, 1, 1, phases.shape[3], rows, plan.window.out_size[1])
    return [lax.dynamic_slice(phases, _tap_start(t, c, plan), size)[0, 0, 0]
            for c in range(phases.shape[2])]


def _tap_windows_add(acc, updates, t, plan: _KernelPlan):
    """Adjoint of :func:`_tap_windows`, accumulated in place."""
    for c, update in enumerate(updates):
        start = _tap_start(t, c, plan)
        current = lax.dynamic_slice(acc, start, (1, 1, 1, *update.shape))
        acc = lax.dynamic_update_slice(acc, current + update[None, None, None], start)
    return acc


def _at_axis(ndim, axis, start):
    index = [jnp.zeros((), jnp.int32)] * ndim
    index[axis] = jnp.asarray(start, jnp.int32)
    return index


def _slice_axis(a, axis, start, size):
    shape = list(a.shape)
    shape[axis] = size
    return lax.dynamic_slice(a, _at_axis(a.ndim, axis, start), shape)


def _add_axis(acc, update, axis, start):
    index = _at_axis(acc.ndim, axis, start)
    current = lax.dynamic_slice(acc, index, update.shape)
    return lax.dynamic_update_slice(acc, current + update, index)


def _strips(plan: _KernelPlan):
    """``(number of strips, halo)``; the last strip is moved up to end at the last row."""
    return plan.window.strip_count(plan.rows), plan.window.halo


@functools.partial(autodiff.custom_vjp, nondiff_argnums=(3,))
def _kernel_taps(phases, centre, params, plan: _KernelPlan):
    """Tap-major kernel ``[T, B, Ho, Wo]`` from guide phases ``[sh, sw, D, B, Hq, Wq]`` and the
    planar window centres ``[D, B, Ho, Wo]``."""
    depth, batch, out_h, out_w = centre.shape
    rows, taps = plan.rows, plan.window.taps
    strips, halo = _strips(plan)

    def strip(s, out):
        start = geo.strip_start(s, plan.rows, plan.window.out_size[0])
        src = _slice_axis(phases, 4, start, rows + halo)
        c = _slice_axis(centre, 2, start, rows)
        c = [c[i] for i in range(depth)]

        def tap(t, out):
            value = _tap_value(_tap_windows(src, t, rows, plan), c, params, plan)
            index = _at_axis(4, 0, t)
            index[2] = start
            return lax.dynamic_update_slice(out, value[None], index)

        return lax.fori_loop(0, taps, tap, out)

    out = jnp.zeros((taps, batch, out_h, out_w), centre.dtype)
    return lax.fori_loop(0, strips, strip, out)


def _kernel_taps_fwd(phases, centre, params, plan):
    return _kernel_taps(phases, centre, params, plan), (phases, centre, params)


def _kernel_taps_bwd(plan, residuals, cotangent):
    phases, centre, params = residuals
    depth, batch, _, out_w = centre.shape
    rows, taps = plan.rows, plan.window.taps
    strips, halo = _strips(plan)
    zeros = functools.partial(jax.tree_util.tree_map, jnp.zeros_like)

    def strip(s, carry):
        d_phases, d_centre, d_params = carry
        start = geo.strip_start(s, plan.rows, plan.window.out_size[0])
        src = _slice_axis(phases, 4, start, rows + halo)
        c = _slice_axis(centre, 2, start, rows)
        c = [c[i] for i in range(depth)]
        # The moved-up last strip must not count rows an earlier strip already did.
        fresh = geo.strip_fresh_rows(s, start, rows)[:, None]

        def tap(t, acc):
            d_src, d_c, d_p = acc
            index = _at_axis(4, 0, t)
            index[2] = start
            ct = lax.dynamic_slice(cotangent, index, (1, batch, rows, out_w))[0]
            ct = jnp.where(fresh, ct, jnp.zeros((), ct.dtype))
            _, vjp = jax.vjp(lambda w, c, p: _tap_value(w, c, p, plan),
                             _tap_windows(src, t, rows, plan), c, params)
            g_w, g_c, g_p = vjp(ct)
            return (_tap_windows_add(d_src, g_w, t, plan),
                    [a + b for a, b in zip(d_c, g_c)],
                    jax.tree_util.tree_map(jnp.add, d_p, g_p))

        d_src, d_c, d_p = lax.fori_loop(0, taps, tap, zeros((src, c, params)))
        return (_add_axis(d_phases, d_src, 4, start),
                _add_axis(d_centre, jnp.stack(d_c), 2, start),
                jax.tree_util.tree_map(jnp.add, d_params, d_p))

    return lax.fori_loop(0, strips, strip, zeros((phases, centre, params)))


_kernel_taps.defvjp(_kernel_taps_fwd, _kernel_taps_bwd)
