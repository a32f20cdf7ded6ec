"""Fused PAC ops: the adapting kernel is computed inside the loop over window taps.

``fused_pac_conv2d(x, guide, W)`` equals ``pac_conv2d(x, pac_kernel(guide, ...)[0], W)`` (and
likewise for the transposed convolution and for PPAC) but never materialises the
``[B, Ho, Wo, kh, kw]`` kernel nor ``kh * kw`` copies of the input, forward or backward: memory
stays a few input-sized buffers whatever the kernel size (see :mod:`ppac_jax.ops.tap_loop`).

Differences from the two-step path: ``mask`` is treated as data (no gradient flows into it).
Half-precision inputs are computed in float32 and the results have the inputs' dtype.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from ppac_jax.ops import geometry as geo
from ppac_jax.ops import tap_loop
from ppac_jax.ops.adapting_kernel import centre_features, check_mask, valid_fraction
from ppac_jax.ops.kernel import compute_dtype, kernel_spec
from ppac_jax.ops.pac import _add_bias, _check_weight
from ppac_jax.ops.precision import matmul_precision
from ppac_jax.ops.tiling import check_tiling, choose_tiling
from ppac_jax.ops.prob import _check_weight_norm, _divide, _summed_exp, check_confidence


def fused_pac_conv2d(x, guide, weight, bias=None, *, stride=1, padding=0, dilation=1,
                     shared_filters=False, kernel_type="gaussian", asym=False, inv_alpha=None,
                     inv_lambda=None, smooth_kernel=None, normalize=False, mask=None,
                     channel_wise=False, tiling=None):
    """Pixel-adaptive convolution with the adapting kernel of ``guide`` computed on the fly.

    Same result as ``pac_conv2d(x, pac_kernel(guide, k, stride=..., padding=..., ...)[0], W)``
    (kernel options as in :func:`ppac_jax.ops.pac_kernel`).

    Args:
      x: ``[B, H, W, Cin]`` input.
      guide: ``[B, H, W, D]`` guidance features (x's batch and spatial size).
      weight: ``[kh, kw, Cin, Cout]`` (HWIO), or ``[kh, kw, 1, 1]`` when ``shared_filters``.
      bias: optional ``[Cout]``.
      stride, padding, dilation: ints or pairs.
      shared_filters: one ``[kh, kw]`` filter applied to every channel (Cout = Cin).
      kernel_type, asym, inv_alpha, inv_lambda, smooth_kernel, normalize: as in ``pac_kernel``.
      mask: optional ``[B, H, W, 1]`` 0/1 validity of x's samples (not differentiated).
      channel_wise: one kernel per channel (``D = Cin``): channel ``c`` of ``x`` is filtered
        with the kernel of guide channel ``c`` alone (``pac_kernel(..., channel_wise=True)``;
        ``inv_alpha`` / ``inv_lambda`` may then be ``[D]``).
      tiling: loop layout, :class:`~ppac_jax.ops.tiling.Tiling` (default: from the shapes).

    Returns:
      ``y [B, Ho, Wo, Cout]``, or ``(y, output_mask)`` when ``mask`` is given, output_mask
      ``[B, Ho, Wo, 1]`` (``[B, Ho, Wo, D]`` channel-wise, as ``pac_kernel``'s).

    Raises:
      ValueError: naming the argument whose shape or value is wrong.

    A normalised gaussian kernel is computed in a stable form (its exponent shifted by its
    maximum over the window's valid taps): float32 gradients stay finite where the raw
    kernel's window sum underflows.
    """
    geo.check_rank(x, 4, "x", "B, H, W, Cin")
    k = _check_weight(weight, x.shape[-1], shared_filters)
    win = geo.window(x.shape[1:3], k, stride=stride, padding=padding, dilation=dilation)
    return _fused(x, guide, win, weight, bias, shared_filters,
                  _spec(guide, kernel_type, asym, inv_alpha, inv_lambda, normalize,
                        channel_wise),
                  smooth_kernel, mask, tiling)


def fused_pac_conv_transpose2d(x, guide, weight, bias=None, *, stride=1, padding=0,
                               output_padding=0, dilation=1, shared_filters=False,
                               kernel_type="gaussian", asym=False, inv_alpha=None,
                               inv_lambda=None, smooth_kernel=None, normalize=False, mask=None,
                               channel_wise=False, tiling=None):
    """Pixel-adaptive transposed convolution with the kernel of ``guide`` computed on the fly.

    Same result as ``pac_conv_transpose2d(x, pac_kernel(guide, k, ..., transposed=True)[0], W)``
    (weight not flipped; see :func:`ppac_jax.ops.pac_conv_transpose2d`).

    Args:
      x: ``[B, h, w, Cin]`` low-resolution input.
      guide: ``[B, Ho, Wo, D]`` guidance on the *output* grid,
        ``Ho = (h - 1) s - 2p + d (kh - 1) + 1 + output_padding``.
      weight: ``[kh, kw, Cin, Cout]``, or ``[kh, kw, 1, 1]`` when ``shared_filters``.
      bias: optional ``[Cout]``.
      stride, padding, output_padding, dilation: ints or pairs.
      kernel_type, asym, inv_alpha, inv_lambda, smooth_kernel, normalize: as in ``pac_kernel``.
      mask: optional ``[B, h, w, 1]`` 0/1 validity of x's samples (not differentiated).
      channel_wise, tiling: as in :func:`fused_pac_conv2d`.

    Returns:
      ``y [B, Ho, Wo, Cout]``, or ``(y, output_mask)`` when ``mask`` is given (as in
      :func:`fused_pac_conv2d`).
    """
    geo.check_rank(x, 4, "x", "B, h, w, Cin")
    k = _check_weight(weight, x.shape[-1], shared_filters)
    win = geo.window(x.shape[1:3], k, stride=stride, padding=padding, dilation=dilation,
                     output_padding=output_padding, transposed=True)
    return _fused(x, guide, win, weight, bias, shared_filters,
                  _spec(guide, kernel_type, asym, inv_alpha, inv_lambda, normalize,
                        channel_wise),
                  smooth_kernel, mask, tiling)


def fused_prob_pac_conv2d(x, confidence, guide, weight, weight_norm, bias=None, *, stride=1,
                          padding=0, dilation=1, shared_filters=False, kernel_type="gaussian",
                          asym=False, inv_alpha=None, inv_lambda=None, smooth_kernel=None,
                          tiling=None):
    """Confidence-weighted PAC with the kernel of ``guide`` computed on the fly.

    Same result as ``prob_pac_conv2d(x, confidence, pac_kernel(guide, k, ...)[0], W, W_norm)``:
    ``pac(x * c, K, W) / max(pac(c, K, exp(W_norm)), 1e-20) + bias``; numerator and
    denominator come out of one pass over the taps.

    Args:
      x: ``[B, H, W, Cin]``; confidence: ``[B, H, W, 1]``; guide: ``[B, H, W, D]``.
      weight, weight_norm: ``[kh, kw, Cin, Cout]``, or ``[kh, kw, 1, 1]`` when ``shared_filters``.
      bias: optional ``[Cout]``.
      stride, padding, dilation, kernel options, tiling: as in :func:`fused_pac_conv2d`.

    Returns:
      ``[B, Ho, Wo, Cout]``.

    float32 gradients stay finite where the kernel's window sums underflow: the 1e-20 floor
    takes over there, and the ratio is differentiated as a ratio (no squared denominator).
    """
    check_confidence(x, confidence)
    win = _normalized_window(x, weight, weight_norm, shared_filters, stride, padding, dilation)
    stacked = jnp.concatenate([x * confidence, confidence.astype(x.dtype)], axis=-1)
    return _one_pass_ratio(stacked, None, guide, weight, weight_norm, bias, win, shared_filters,
                           _spec(guide, kernel_type, asym, inv_alpha, inv_lambda, False),
                           smooth_kernel, tiling)


def fused_normalized_pac_conv2d(x, guide, weight, weight_norm, bias=None, *, stride=1,
                                padding=0, dilation=1, shared_filters=False,
                                kernel_type="gaussian", asym=False, inv_alpha=None,
                                inv_lambda=None, smooth_kernel=None, tiling=None):
    """Normalised PAC with the kernel of ``guide`` computed on the fly.

    Same result as ``normalized_pac_conv2d(x, pac_kernel(guide, k, ...)[0], W, W_norm)``:
    ``pac(x, K, W) / max(sum_t K_t sum_c exp(W_norm)_t, 1e-20) + bias``, where the denominator
    counts every tap, also outside the image (as the reference ``NormalizedPacConv2d``);
    numerator and denominator come out of one pass over the taps.

    Args:
      x: ``[B, H, W, Cin]``; guide: ``[B, H, W, D]``.
      weight, weight_norm: ``[kh, kw, Cin, Cout]``, or ``[kh, kw, 1, 1]`` when ``shared_filters``.
      bias: optional ``[Cout]``.
      stride, padding, dilation, kernel options, tiling: as in :func:`fused_pac_conv2d`.

    Returns:
      ``[B, Ho, Wo, Cout]``.

    Raises:
      ValueError: naming the argument whose shape or value is wrong.
    """
    geo.check_rank(x, 4, "x", "B, H, W, Cin")
    win = _normalized_window(x, weight, weight_norm, shared_filters, stride, padding, dilation)
    # The denominator's input is 1 at every tap, padding included: padded with ones.
    x_pad = win.pad_input(x)
    stacked = jnp.concatenate([x, jnp.ones((*x.shape[:3], 1), x.dtype)], axis=-1)
    stacked_pad = jnp.concatenate([x_pad, jnp.ones((*x_pad.shape[:3], 1), x.dtype)], axis=-1)
    return _one_pass_ratio(stacked, stacked_pad, guide, weight, weight_norm, bias, win,
                           shared_filters,
                           _spec(guide, kernel_type, asym, inv_alpha, inv_lambda, False),
                           smooth_kernel, tiling)


def _normalized_window(x, weight, weight_norm, shared_filters, stride, padding, dilation):
    _check_weight(weight, x.shape[-1], shared_filters)
    _check_weight_norm(weight, weight_norm)
    return geo.window(x.shape[1:3], weight.shape[:2], stride=stride, padding=padding,
                      dilation=dilation)


def _one_pass_ratio(stacked, stacked_pad, guide, weight, weight_norm, bias, win, shared_filters,
                    spec_params, smooth_kernel, tiling):
    """``pac(numerator, K, W) / max(pac(denominator, K, sum_c exp(W_norm)), 1e-20) + bias`` for
    ``stacked = [numerator channels..., denominator channel]`` (``stacked_pad``: padded, when its
    padding is not zeros), in one pass of the engine: ``W`` and the summed ``exp(W_norm)`` on
    the block diagonal of one dense weight, or, with shared filters, one filter per channel."""
    channels = stacked.shape[-1] - 1
    norm_weight = _summed_exp(weight_norm).astype(weight.dtype)     # [kh, kw, 1, O or 1]
    if shared_filters:
        w = jnp.concatenate([jnp.broadcast_to(weight, (*weight.shape[:2], 1, channels)),
                             norm_weight], axis=-1)                 # [kh, kw, 1, C + 1]
        out = channels
    else:
        out = weight.shape[-1]
        top = jnp.concatenate([weight, jnp.zeros((*weight.shape[:3], out), weight.dtype)], -1)
        bottom = jnp.concatenate([jnp.zeros((*weight.shape[:2], 1, out), weight.dtype),
                                  norm_weight], -1)
        w = jnp.concatenate([top, bottom], axis=2)                  # [kh, kw, C + 1, 2 O]
    y = _fused(stacked, guide, win, w, None, shared_filters, spec_params, smooth_kernel, None,
               tiling, x_pad=stacked_pad)
    return _divide(y[..., :out], y[..., out:], bias)


def _spec(guide, kernel_type, asym, inv_alpha, inv_lambda, normalize, channel_wise=False):
    """``(KernelSpec, params)`` for ``guide`` (checked to be rank 4)."""
    geo.check_rank(guide, 4, "guide", "B, H, W, D")
    return kernel_spec(kernel_type, asym=asym, inv_alpha=inv_alpha, inv_lambda=inv_lambda,
                       depth=guide.shape[-1], normalize=normalize, channel_wise=channel_wise)


def _fused(x, guide, win: geo.Window, weight, bias, shared_filters, spec_params, smooth_kernel,
           mask, tiling, *, x_pad=None):
    """The guided product of every fused op. ``weight``: ``[kh, kw, Cin, Cout]`` (dense), or,
    with ``shared_filters``, ``[kh, kw, 1, 1]`` (one filter) or ``[kh, kw, 1, Cin]`` (one filter
    per channel, depthwise). ``x_pad``: ``x`` already padded (``win.pad_input``'s shape), for
    a padding that is not zeros."""
    spec, params = spec_params
    tiling = check_tiling(tiling)
    if spec.channel_wise:
        return _per_channel(x, guide, win, weight, bias, shared_filters, spec_params,
                            smooth_kernel, mask, tiling)
    normalize = spec.normalize
    batch, channels = x.shape[0], x.shape[-1]
    grid = (batch, *(win.out_size if win.transposed else win.in_size))
    if guide.shape[:3] != grid:
        raise ValueError(f"guide must be [B, H, W, D] on the grid {grid} of "
                         f"{'the output' if win.transposed else 'x'}, got {guide.shape}")
    if mask is not None:
        check_mask(mask, batch, win)
    kdtype = compute_dtype(guide, smooth_kernel, *params)
    # Results have the inputs' dtype (as pac_kernel's kernel has the guide's); the computation
    # runs in float32 for half-precision inputs.
    out_dtype = jnp.result_type(x, weight, guide)
    dtype = compute_dtype(x, weight, kdtype)
    guide = guide.astype(dtype)
    guide_padded = win.pad_guide(guide)
    # Without smoothing the centre is a tap of the padded guide: read it inside the loop.
    centre = None if smooth_kernel is None else centre_features(
        guide, guide_padded, win, jnp.asarray(smooth_kernel, dtype))

    valid = ratio = None
    if mask is not None or normalize:
        ones = jnp.ones((1, *win.in_size, 1), dtype)
        valid_map = ones if mask is None else lax.stop_gradient(mask).astype(dtype)
        valid = win.pad_input(valid_map)
        if mask is not None:
            ratio = valid_fraction(_window_count(valid, win),
                                   _window_count(win.pad_input(ones), win))

    if shared_filters:
        w = weight[:, :, 0, :].reshape(win.taps, -1)
    else:
        w = weight.reshape(win.taps, channels, weight.shape[-1])
    plan = tap_loop.Plan(win, dense=not shared_filters, fused=True, kernel=spec,
                         with_sum=normalize,
                         centre_tap=-1 if centre is not None else win.centre_tap)
    ph = lambda a: geo.phase_split(a, win.tap_stride)
    if spec.log_domain:
        # Stable normalised gaussian: the exponent shifted by its maximum over the valid taps
        # (tap_loop.window_min_distance), carried as the centre's last channel.
        if centre is None:
            centre = centre_features(guide, guide_padded, win)
        shift = tap_loop.window_min_distance(ph(guide_padded), ph(valid), centre, plan)
        centre = jnp.concatenate([centre, lax.stop_gradient(shift)[..., None]], axis=-1)
        plan = plan._replace(shifted=True, centre_tap=-1)
    if tiling is None:
        tiling = choose_tiling("sum", batch=batch, out_size=win.out_size, channels=channels,
                               guide_channels=guide.shape[-1], itemsize=dtype.itemsize,
                               dense=not shared_filters)
    planes = shared_filters and tiling.planar
    if x_pad is None and win.tap_stride == (1, 1) and not win.transposed and not planes:
        # x, the guide and the validity share one zero padding: the loop pads them itself,
        # inside its custom VJP (tap_loop.Plan.pads, leaner backward). Not on planes: padding
        # each plane of each strip measured slower, for no memory saved (RESULTS.md, session 8).
        x_src, guide_src, valid_src = x, guide, None if valid is None else valid_map
        plan = plan._replace(pads=tuple(win.input_pads))
    else:
        x_src = win.pad_input(x) if x_pad is None else x_pad
        guide_src, valid_src = guide_padded, valid
    u, n = tap_loop.window_sum(ph(x_src.astype(dtype)), ph(guide_src),
                               None if valid_src is None else ph(valid_src), centre,
                               w.astype(dtype), tuple(jnp.asarray(q, dtype) for q in params), plan,
                               tiling)
    if normalize:
        u = u / (n + (n == 0).astype(dtype))
    elif ratio is not None:
        u = u / (ratio + (ratio == 0).astype(dtype))
    y = _add_bias(u.astype(out_dtype), bias)
    if mask is None:
        return y
    output_mask = jnp.broadcast_to((ratio != 0).astype(dtype), (batch, *win.out_size, 1))
    return y, output_mask


def _per_channel(x, guide, win, weight, bias, shared_filters, spec_params, smooth_kernel, mask,
                 tiling):
    """:func:`_fused` with channel-wise kernels: channel ``c`` of ``x`` with the kernel of
    guide channel ``c`` (and its ``inv`` parameters), one single-channel guided product per
    channel (``vmap``), summed over the channels for a dense weight."""
    spec, params = spec_params
    channels = x.shape[-1]
    if guide.shape[-1] != channels:
        raise ValueError(f"channel_wise=True needs one guide channel per x channel: guide has "
                         f"{guide.shape[-1]} channels, x {channels}")
    one_spec = spec._replace(channel_wise=False)

    def one(x_c, guide_c, w_c, params_c):
        return _fused(x_c[..., None], guide_c[..., None], win, w_c, None, shared_filters,
                      (one_spec, params_c), smooth_kernel, mask, tiling)

    w_axis = None if shared_filters else 2       # dense: W[:, :, c:c+1, :] for channel c
    w = weight if shared_filters else weight[:, :, :, None, :]
    out = jax.vmap(one, in_axes=(3, 3, w_axis, tuple(0 if p.ndim else None for p in params)))(
        x, guide, w, params)
    y, out_mask = out if mask is not None else (out, None)
    y = jnp.moveaxis(y[..., 0], 0, -1) if shared_filters else jnp.sum(y, axis=0)
    y = _add_bias(y, bias)
    return y if mask is None else (y, jnp.moveaxis(out_mask[..., 0], 0, -1))


def _window_count(padded, win: geo.Window):
    """Sum of a padded ``[B', Hp, Wp, 1]`` map over every window: ``[B', Ho, Wo, 1]``."""
    ones = jnp.ones((*win.kernel_size, 1, 1), padded.dtype)
    count = lax.conv_general_dilated(
        padded, ones, win.tap_stride, "VALID", rhs_dilation=win.dilation,
        dimension_numbers=("NHWC", "HWIO", "NHWC"), precision=matmul_precision())
    return count[:, :win.out_size[0], :win.out_size[1]]
