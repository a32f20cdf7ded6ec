"""Pixel-adaptive convolution, transposed convolution and pooling with a given kernel.

Every op here is one *windowed product*::

    y[b, o, :] = sum over taps t of  K[b, o, t] * (W[t] applied to x_pad[b, window(o, t), :])

with two interchangeable implementations:

* ``"patches"``: extract all windows (``lax.conv_general_dilated_patches``) and contract.
  Simple, but holds ``kh * kw`` copies of the input (and of its gradient).
* ``"loop"``: the same product as a ``lax.fori_loop`` over the taps with dynamic slices
  (:mod:`ppac_jax.ops.tap_loop`, shared with the fused ops); compact programs, memory flat in
  the kernel size, the fastest on CPU for all but tiny problems.

``"auto"`` picks ``patches`` for tiny problems and ``loop`` otherwise (:func:`choose_impl`).
``patches`` stays as the plain-autodiff reference that tests compare the loop against.
``"shifted"`` (an unrolled Python loop over the taps) was removed: it is read as ``"loop"``.
"""

from __future__ import annotations

import warnings
from typing import NamedTuple

import jax.numpy as jnp

from ppac_jax.ops import geometry as geo
from ppac_jax.ops import tap_loop
from ppac_jax.ops.kernel import compute_dtype
from ppac_jax.ops.precision import matmul_precision
from ppac_jax.ops.tiling import Tiling, check_tiling, choose_impl, choose_tiling

IMPLS = ("auto", "patches", "loop")


class _Product(NamedTuple):
    window: geo.Window
    dense: bool          # weight [kh, kw, C, O]; otherwise one scalar per tap [kh, kw]
    channel_wise: bool   # kernel has a trailing channel axis


def pac_conv2d(x, kernel, weight, bias=None, *, stride=1, padding=0, dilation=1,
               shared_filters=False, impl="auto", tiling=None):
    """Pixel-adaptive convolution with a precomputed adapting kernel.

    ``y[b, o, :] = sum_{t, c} x_pad[b, o*s + t*d, c] * K[b, o, t] * W[t, c, :] + bias``
    (zero padding). With ``K = 1`` this is ``lax.conv_general_dilated``.

    Args:
      x: ``[B, H, W, Cin]`` input.
      kernel: ``[B, Ho, Wo, kh, kw]`` adapting kernel, or ``[B, Ho, Wo, kh, kw, Cin]``
        (channel-wise), e.g. from :func:`ppac_jax.ops.pac_kernel` with the same geometry.
      weight: ``[kh, kw, Cin, Cout]`` (HWIO), or ``[kh, kw, 1, 1]`` when ``shared_filters``
        (one filter applied to every channel; then Cout = Cin).
      bias: optional ``[Cout]``.
      stride, padding, dilation: ints or pairs.
      shared_filters: see ``weight``.
      impl: ``"auto"``, ``"patches"`` or ``"loop"`` (module docstring).
      tiling: loop layout, :class:`~ppac_jax.ops.tiling.Tiling` (default: from the shapes;
        static; unused when ``impl`` is or picks ``"patches"``).

    Returns:
      ``[B, Ho, Wo, Cout]`` with ``Ho = (H + 2p - d(kh - 1) - 1) // s + 1`` (same for W).
    """
    geo.check_rank(x, 4, "x", "B, H, W, Cin")
    k = _check_weight(weight, x.shape[-1], shared_filters)
    win = geo.window(x.shape[1:3], k, stride=stride, padding=padding, dilation=dilation)
    channel_wise = _check_kernel(kernel, x.shape[0], win, x.shape[-1])
    # One input and one output channel: the per-channel product is the same sum, cheaper.
    dense = not shared_filters and weight.shape[2:] != (1, 1)
    w = weight if dense else weight[:, :, 0, 0]
    y = windowed_product(win.pad_input(x), kernel, w, _Product(win, dense, channel_wise), impl,
                         tiling)
    return _add_bias(y, bias)


def pac_conv_transpose2d(x, kernel, weight, bias=None, *, stride=1, padding=0, output_padding=0,
                         dilation=1, shared_filters=False, impl="auto", tiling=None):
    """Pixel-adaptive transposed convolution with a precomputed adapting kernel.

    The input is zero-inserted (``stride - 1`` zeros between samples), padded by
    ``(k - 1) d - p`` (plus ``output_padding`` at the end), and PAC-convolved with stride 1.
    The weight is **not** flipped: with ``K = 1`` this equals
    ``lax.conv_transpose(x, weight, stride, [((k-1)d - p, (k-1)d - p + op)] * 2,
    rhs_dilation=d)`` (``transpose_kernel=False``), i.e. PyTorch's ``conv_transpose2d`` of the
    spatially flipped weight; the reference implementation behaves the same way.

    Args:
      x: ``[B, h, w, Cin]`` low-resolution input.
      kernel: ``[B, Ho, Wo, kh, kw]`` (or ``[..., Cin]`` channel-wise) on the output grid, e.g.
        ``pac_kernel(guide, k, ..., transposed=True)``.
      weight: ``[kh, kw, Cin, Cout]``, or ``[kh, kw, 1, 1]`` when ``shared_filters``.
        (From PyTorch's ``[Cin, Cout, kh, kw]``: ``transpose(2, 3, 0, 1)``.)
      bias: optional ``[Cout]``.
      stride, padding, output_padding, dilation: ints or pairs; ``output_padding`` must be
        smaller than ``stride`` or ``dilation``. ``padding > (k - 1) d`` crops.
      impl, tiling: as in :func:`pac_conv2d`.

    Returns:
      ``[B, Ho, Wo, Cout]`` with ``Ho = (h - 1) s - 2p + d (kh - 1) + 1 + output_padding``.
    """
    geo.check_rank(x, 4, "x", "B, h, w, Cin")
    k = _check_weight(weight, x.shape[-1], shared_filters)
    win = geo.window(x.shape[1:3], k, stride=stride, padding=padding, dilation=dilation,
                     output_padding=output_padding, transposed=True)
    channel_wise = _check_kernel(kernel, x.shape[0], win, x.shape[-1])
    w = weight if not shared_filters else weight[:, :, 0, 0]
    y = windowed_product(win.pad_input(x), kernel, w,
                         _Product(win, not shared_filters, channel_wise), impl, tiling)
    return _add_bias(y, bias)


def pac_pool2d(x, kernel, *, kernel_size, stride=1, padding=0, dilation=1, impl="auto",
               tiling=None):
    """Pixel-adaptive pooling: ``y[b, o, c] = sum_t x_pad[b, o*s + t*d, c] * K[b, o, t(, c)]``.

    With ``K = 1`` this is *sum* pooling over the zero-padded window; with the normalised kernel
    of a constant guide it is average pooling that excludes padding.

    Args:
      x: ``[B, H, W, C]``.
      kernel: ``[B, Ho, Wo, kh, kw]`` or ``[B, Ho, Wo, kh, kw, C]`` (channel-wise).
      kernel_size: odd int or pair.
      stride, padding, dilation: ints or pairs.
      tiling: loop layout, :class:`~ppac_jax.ops.tiling.Tiling` (default: from the shapes).

    Returns:
      ``[B, Ho, Wo, C]``.
    """
    geo.check_rank(x, 4, "x", "B, H, W, C")
    win = geo.window(x.shape[1:3], kernel_size, stride=stride, padding=padding,
                     dilation=dilation)
    channel_wise = _check_kernel(kernel, x.shape[0], win, x.shape[-1])
    ones = jnp.ones(win.kernel_size, compute_dtype(x, kernel))
    return windowed_product(win.pad_input(x), kernel, ones, _Product(win, False, channel_wise),
                            impl, tiling)


def _check_weight(weight, in_channels, shared_filters):
    geo.check_rank(weight, 4, "weight", "kh, kw, Cin, Cout")
    k = geo.check_kernel_size(weight.shape[:2], "weight kernel size (weight.shape[:2])")
    if shared_filters:
        if weight.shape[2:] != (1, 1):
            raise ValueError(f"with shared_filters=True weight must be [kh, kw, 1, 1], "
                             f"got {weight.shape}")
    elif weight.shape[2] != in_channels:
        raise ValueError(f"weight input channels (weight.shape[2] = {weight.shape[2]}) must "
                         f"equal x channels ({in_channels})")
    return k


def _check_kernel(kernel, batch, win: geo.Window, channels):
    """Validate the adapting kernel's shape; return whether it is channel-wise."""
    expected = (batch, *win.out_size, *win.kernel_size)
    if getattr(kernel, "ndim", None) not in (5, 6) or tuple(kernel.shape[:5]) != expected:
        raise ValueError(f"kernel must have shape {expected} ([B, Ho, Wo, kh, kw], optionally "
                         f"with a trailing channel axis), got {getattr(kernel, 'shape', None)}")
    if kernel.ndim == 6 and kernel.shape[5] != channels:
        raise ValueError(f"channel-wise kernel's last axis ({kernel.shape[5]}) must equal x "
                         f"channels ({channels})")
    return kernel.ndim == 6


def _add_bias(y, bias):
    if bias is None:
        return y
    if getattr(bias, "shape", None) != (y.shape[-1],):
        raise ValueError(f"bias must have shape ({y.shape[-1]},), got "
                         f"{getattr(bias, 'shape', None)}")
    return y + bias.astype(y.dtype)


def windowed_product(x_pad, kernel, weight, g: _Product, impl: str = "auto",
                     tiling: Tiling = None):
    """Dispatch the windowed product to an implementation.

    x_pad ``[B, Hp, Wp, C]`` (padded / zero-inserted); kernel ``[B, Ho, Wo, kh, kw(, C)]``;
    weight ``[kh, kw, C, O]`` (dense) or ``[kh, kw]`` -> ``[B, Ho, Wo, O or C]``. The loop
    runs with ``tiling`` (default: :func:`choose_tiling` from the shapes).
    """
    if impl == "shifted":  # removed implementation: same product, same numbers
        warnings.warn('impl="shifted" was removed; using impl="loop"', DeprecationWarning,
                      stacklevel=3)
        impl = "loop"
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
    tiling = check_tiling(tiling)
    if impl == "auto":
        impl = choose_impl(x_pad.shape, g.window.kernel_size, g.window.out_size,
                           jnp.dtype(x_pad.dtype).itemsize)
    out_dtype = jnp.result_type(x_pad, kernel, weight)
    dtype = compute_dtype(x_pad, kernel, weight)
    x_pad, kernel, weight = x_pad.astype(dtype), kernel.astype(dtype), weight.astype(dtype)
    if impl == "patches":
        return _patches_product(x_pad, kernel, weight, g).astype(out_dtype)
    if tiling is None:
        tiling = choose_tiling("sum", batch=x_pad.shape[0], out_size=g.window.out_size,
                               channels=x_pad.shape[-1], itemsize=dtype.itemsize, dense=g.dense)
    return _loop_product(x_pad, kernel, weight, g, tiling).astype(out_dtype)


def _patches_product(x_pad, kernel, weight, g: _Product):
    win = g.window
    windows = geo.extract_windows(x_pad, win.kernel_size, win.out_size, win.tap_stride,
                                  win.dilation)
    weighted = windows * (kernel if g.channel_wise else kernel[..., None])
    if g.dense:
        return jnp.einsum("bhwijc,ijco->bhwo", weighted, weight, precision=matmul_precision())
    return jnp.einsum("bhwijc,ij->bhwc", weighted, weight, precision=matmul_precision())


def _loop_product(x_pad, kernel, weight, g: _Product, tiling: Tiling):
    taps = g.window.taps
    kern = kernel.reshape(*kernel.shape[:3], taps, *kernel.shape[5:])
    kern = jnp.moveaxis(kern, 3, 0)                        # [T, B, Ho, Wo(, C)]
    if not g.channel_wise and not g.dense:
        kern = kern[..., None]           # per-channel sums take [T, B, Ho, Wo, 1 or C]
    w = weight.reshape(taps, *weight.shape[2:]) if g.dense else weight.reshape(taps, 1)
    plan = tap_loop.Plan(g.window, dense=g.dense, fused=False)
    y, _ = tap_loop.window_sum(geo.phase_split(x_pad, g.window.tap_stride), kern, None, None,
                               w, (), plan, tiling)
    return y
