"""Flax NNX layers mirroring the original PAC / PPAC modules, built on :mod:`ppac_jax.ops`.

* :class:`PacConv2d` (``pac.PacConv2d``): ``layer(x, guide)`` or ``layer(x, kernel=K)``;
* :class:`PacConvTranspose2d` (``pac.PacConvTranspose2d``): same, guide on the output grid;
* :class:`PacPool2d` (``pac.PacPool2d``): same;
* :class:`ProbPacConv2d` (``probabilistic_pac.ProbPacConv2d``): ``layer(x, confidence, guide)``;
* :class:`NormalizedPacConv2d` (``probabilistic_pac.NormalizedPacConv2d``): ``layer(x, guide)``;
* :class:`Conv2d` (``torch.nn.Conv2d``): ``layer(x)``.

Constructors take the original's arguments (``rngs`` optional, default ``nnx.Rngs(0)``), and
attribute names are the original's state-dict names (``weight``, ``bias``, ``inv_alpha``,
``inv_lambda``, ``smooth_kernel``, ``weight_normalization``) with ``torch_layout`` metadata, so
:func:`ppac_jax.convert.load_torch_weights` / ``export_torch_weights`` move weights both ways.
Trainable tensors are ``nnx.Param``; the original's buffers (fixed smooth kernels, ``_fixed``
inv parameters, the ``crf_pool`` weight, weights frozen by ``fixed_gaussian_weights``) are
:class:`Buffer` variables, which ``nnx.grad`` / ``nnx.Optimizer(wrt=nnx.Param)`` leave alone.

Arrays are NHWC; weights HWIO ``[kh, kw, Cin, Cout]`` (``[kh, kw, 1, 1]`` with
``shared_filters``).
"""

from __future__ import annotations

from typing import Optional, Sequence, Union

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax import lax

from ppac_jax import ops
from ppac_jax.nn import fillers
from ppac_jax.ops.geometry import as_pair
from ppac_jax.ops.precision import matmul_precision

IntOrPair = Union[int, Sequence[int]]

FILLERS = ("uniform", "linear", "crf", "crf_perturbed", "pool", "crf_pool")
DEFAULT_SEED = 0


class Buffer(nnx.Variable):
    """A non-trainable tensor of the original's state dict (a PyTorch buffer)."""


def _numpy_rng(rngs: Optional[nnx.Rngs]) -> np.random.Generator:
    """A NumPy generator seeded from one ``params`` key of ``rngs`` (default ``nnx.Rngs(0)``).

    Initial values are drawn with NumPy: no per-shape XLA compilation at construction.
    """
    rngs = nnx.Rngs(DEFAULT_SEED) if rngs is None else rngs
    return np.random.default_rng(np.asarray(jax.random.key_data(rngs.params())).ravel())


def parse_kernel_type(name: str) -> dict:
    """Parse the original's kernel-type strings (``pac.PacConv2d``'s ``kernel_type`` option).

    ``"gaussian"`` -> ``{"kernel_type": "gaussian", "asym": False, ...}``;
    ``"inv_{alpha}_{lambda}[_asym][_fixed]"`` -> ``kernel_type="inv"`` with ``inv_alpha``,
    ``inv_lambda`` (floats, the initial values), ``asym`` and ``fixed`` (not learnable).
    Raises ``ValueError`` for any other string.
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
    raise ValueError(f'kernel_type must be "gaussian" or '
                     f'"inv_{{alpha}}_{{lambda}}[_asym][_fixed]", got {name!r}')


def _check_channels(value: int, name: str) -> int:
    if int(value) != value or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return int(value)


def _smooth_kernel_init(smooth_kernel_type: str):
    """``(values [n, n] float32 or None, learnable)`` for a ``smooth_kernel_type`` string."""
    if smooth_kernel_type == "none":
        return None, False
    if smooth_kernel_type == "gaussian":
        taps = np.array([0.25, 0.5, 0.25], np.float32)
        return np.outer(taps, taps), False
    kind, _, size = smooth_kernel_type.partition("_")
    if kind in ("average", "full") and size.isdigit() and int(size) % 2 == 1:
        n = int(size)
        return np.full((n, n), 1.0 / (n * n), np.float32), kind == "full"
    raise ValueError(f'smooth_kernel_type must be "none", "gaussian", "average_{{n}}" or '
                     f'"full_{{n}}" with odd n, got {smooth_kernel_type!r}')


IMPLS = ("auto", "patches", "loop", "fused")


class _PacBase(nnx.Module):
    """What every PAC layer shares: window geometry, the adapting kernel's options and
    parameters, and the call.

    A call with a guide takes the guided engine path (``ops.fused_*``: the kernel computed
    inside the tap loop, never materialised; :meth:`_guided`), except with
    ``impl="patches"``, the plain-autodiff reference (``ops.pac_kernel``, then the patches
    product); a call with a precomputed ``kernel=`` takes the product ``ops.pac_*(x, kernel,
    ...)`` with the layer's ``impl`` (:meth:`_product`). Subclasses give both.
    """

    def __init__(self, kernel_size, stride, padding, dilation, output_padding, transposed,
                 kernel_type, smooth_kernel_type, channel_wise, normalize_kernel,
                 inv_channels: int, param_dtype, impl):
        if impl not in IMPLS:
            raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
        self.impl = impl
        self.kernel_size = as_pair(kernel_size, "kernel_size")
        if min(self.kernel_size) < 1 or any(k % 2 == 0 for k in self.kernel_size):
            raise ValueError(f"kernel_size must be odd, got {kernel_size!r}")
        self.stride = as_pair(stride, "stride")
        self.padding = as_pair(padding, "padding")
        self.dilation = as_pair(dilation, "dilation")
        self.output_padding = as_pair(output_padding, "output_padding")
        self.transposed = transposed
        self.kernel_type = kernel_type
        self.smooth_kernel_type = smooth_kernel_type
        self.channel_wise = bool(channel_wise)
        self.normalize_kernel = bool(normalize_kernel)

        parsed = parse_kernel_type(kernel_type)
        self._kernel_kind = parsed["kernel_type"]
        self._asym = parsed["asym"]
        if self._kernel_kind == "inv":
            fixed = parsed["fixed"]
            shape = (inv_channels,) if (self.channel_wise and not fixed) else ()
            if shape and inv_channels < 1:
                raise ValueError("channel-wise learnable inv kernels need out_channels > 0 "
                                 "(the number of guidance channels)")
            kind = Buffer if fixed else nnx.Param
            for name in ("inv_alpha", "inv_lambda"):
                value = jnp.asarray(np.full(shape, parsed[name]), param_dtype)
                setattr(self, name, kind(value, torch_layout="same"))
        smooth, learnable = _smooth_kernel_init(smooth_kernel_type)
        if smooth is not None:
            kind = nnx.Param if learnable else Buffer
            self.smooth_kernel = kind(jnp.asarray(smooth, param_dtype), torch_layout="reshape",
                                      torch_shape=(1, 1, *smooth.shape))

    def _geometry(self):
        """Window options of this layer's ops (``output_padding`` for transposed layers)."""
        geometry = dict(stride=self.stride, padding=self.padding, dilation=self.dilation)
        if self.transposed:
            geometry["output_padding"] = self.output_padding
        return geometry

    def _kernel_options(self):
        """The adapting kernel's options as ``ops.fused_*`` take them."""
        smooth = self.smooth_kernel[...] if hasattr(self, "smooth_kernel") else None
        opts = dict(kernel_type=self._kernel_kind, asym=self._asym, smooth_kernel=smooth)
        if self._kernel_kind == "inv":
            opts.update(inv_alpha=self.inv_alpha[...], inv_lambda=self.inv_lambda[...])
        return opts

    def compute_kernel(self, guide, mask=None):
        """Adapting kernel of this layer (see :func:`ppac_jax.ops.pac_kernel`).

        Args:
          guide: ``[B, H, W, D]`` guidance (for transposed layers on the output grid).
          mask: optional ``[B, h_in, w_in, 1]`` validity of the input samples.

        Returns:
          ``(kernel [B, Ho, Wo, kh, kw(, D)], output_mask [B, Ho, Wo, 1 or D] or None)``.
        """
        opts = self._kernel_options()
        return ops.pac_kernel(guide, self.kernel_size, transposed=self.transposed,
                              channel_wise=self.channel_wise, normalize=self.normalize_kernel,
                              mask=mask, **self._geometry(), **opts)

    def _product_impl(self):
        return "auto" if self.impl == "fused" else self.impl

    def _guided(self, *inputs, guide, mask):
        """``ops.fused_*`` of ``inputs`` and ``guide``."""
        raise NotImplementedError

    def _product(self, *inputs, kernel):
        """``ops.pac_*`` of ``inputs`` with a precomputed adapting kernel."""
        raise NotImplementedError

    def _run(self, inputs, guide, kernel, mask):
        if kernel is not None:
            if guide is not None or mask is not None:
                raise ValueError("pass either guide (and mask) or a precomputed kernel, not both")
            return self._product(*inputs, kernel=kernel)
        if guide is None:
            raise ValueError("guide is required when no precomputed kernel is given")
        if self.impl != "patches":
            return self._guided(*inputs, guide=guide, mask=mask)
        kernel, output_mask = self.compute_kernel(guide, mask)
        y = self._product(*inputs, kernel=kernel)
        return y if mask is None else (y, output_mask)

    def __call__(self, x, guide=None, *, kernel=None, mask=None):
        return self._run((x,), guide, kernel, mask)


def _filled_weight(filler, rng, in_channels, out_channels, kernel_size, stride, shared_filters,
                   normalize_kernel, transposed, param_dtype):
    """``(weight HWIO, is_buffer)`` for a filler name."""
    kh, kw = kernel_size
    shape = (kh, kw, 1, 1) if shared_filters else (kh, kw, in_channels, out_channels)
    if filler == "uniform":
        w = fillers.uniform_weight(rng, shape, in_channels * kh * kw)
        return jnp.asarray(w, param_dtype), False
    if filler == "linear":
        if not transposed:
            raise ValueError('filler="linear" is only available for transposed layers')
        if in_channels != out_channels:
            raise ValueError('filler="linear" needs in_channels == out_channels')
        w = fillers.linear_weight(in_channels, kernel_size, stride, normalize_kernel,
                                  shared_filters)
    elif filler == "crf":
        w = fillers.crf_weight(in_channels, out_channels, kernel_size, shared_filters)
    elif filler == "crf_perturbed":
        w = fillers.crf_perturbed_weight(rng, in_channels, out_channels, kernel_size,
                                         shared_filters)
    elif filler == "pool":
        w = fillers.pool_weight(in_channels, out_channels, kernel_size, shared_filters)
    elif filler == "crf_pool":
        if not shared_filters:
            raise ValueError('filler="crf_pool" needs shared_filters=True')
        return jnp.asarray(fillers.crf_pool_weight(kernel_size), param_dtype), True
    else:
        raise ValueError(f"filler must be one of {FILLERS}, got {filler!r}")
    return jnp.asarray(w, param_dtype), False


def _check_in_out(in_channels, out_channels, shared_filters):
    cin = _check_channels(in_channels, "in_channels")
    cout = _check_channels(out_channels, "out_channels")
    if shared_filters and cin != cout:
        raise ValueError(f"shared_filters=True needs in_channels == out_channels, got "
                         f"{cin} and {cout}")
    return cin, cout


class _PacConvBase(_PacBase):
    """The PAC convolution, plain or transposed (``transposed``): weights, filler, bias."""

    def __init__(self, in_channels, out_channels, kernel_size, stride, padding, dilation,
                 output_padding, transposed, bias, kernel_type, smooth_kernel_type,
                 normalize_kernel, shared_filters, filler, rngs, param_dtype, impl):
        self.in_channels, self.out_channels = _check_in_out(in_channels, out_channels,
                                                            shared_filters)
        super().__init__(kernel_size, stride, padding, dilation, output_padding, transposed,
                         kernel_type, smooth_kernel_type, False, normalize_kernel, 0,
                         param_dtype, impl)
        self.shared_filters = bool(shared_filters)
        self.filler = filler
        rng = _numpy_rng(rngs)
        weight, is_buffer = _filled_weight(filler, rng, self.in_channels, self.out_channels,
                                           self.kernel_size, self.stride, self.shared_filters,
                                           self.normalize_kernel, transposed, param_dtype)
        layout = "IOHW" if transposed else "OIHW"
        self.weight = (Buffer if is_buffer else nnx.Param)(weight, torch_layout=layout)
        if bias:
            if filler == "uniform":
                kh, kw = self.kernel_size
                b = jnp.asarray(fillers.uniform_weight(rng, (self.out_channels,),
                                                       self.in_channels * kh * kw), param_dtype)
            else:
                b = jnp.zeros((self.out_channels,), param_dtype)
            self.bias = nnx.Param(b, torch_layout="same")
        else:
            self.bias = None

    def _bias(self):
        return None if self.bias is None else self.bias[...]

    def _guided(self, x, *, guide, mask):
        op = ops.fused_pac_conv_transpose2d if self.transposed else ops.fused_pac_conv2d
        return op(x, guide, self.weight[...], self._bias(), shared_filters=self.shared_filters,
                  normalize=self.normalize_kernel, mask=mask, **self._geometry(),
                  **self._kernel_options())

    def _product(self, x, *, kernel):
        op = ops.pac_conv_transpose2d if self.transposed else ops.pac_conv2d
        return op(x, kernel, self.weight[...], self._bias(), shared_filters=self.shared_filters,
                  impl=self._product_impl(), **self._geometry())


class PacConv2d(_PacConvBase):
    """Pixel-adaptive convolution layer (``pac.PacConv2d``).

    ``y = pac_conv2d(x, pac_kernel(guide), weight, bias)``.

    Args:
      in_channels, out_channels: channels of ``x`` and ``y``.
      kernel_size: odd int or pair.
      stride, padding, dilation: ints or pairs.
      bias: learnable bias ``[Cout]``.
      kernel_type: ``"gaussian"`` or ``"inv_{alpha}_{lambda}[_asym][_fixed]"`` (learnable
        scalars ``inv_alpha`` / ``inv_lambda`` unless ``_fixed``).
      smooth_kernel_type: ``"none"``, ``"gaussian"`` (fixed 3x3), ``"average_{n}"`` (fixed) or
        ``"full_{n}"`` (learnable), smoothing the centre feature.
      normalize_kernel: normalise the adapting kernel over each window.
      shared_filters: one ``[kh, kw]`` filter for all channels (``in == out``).
      filler: ``"uniform"``, ``"crf"``, ``"crf_perturbed"``, ``"pool"``, ``"crf_pool"`` (see
        :mod:`ppac_jax.nn.fillers`); ``"linear"`` is for transposed layers only.
      native_impl: accepted for compatibility (ignored).
      rngs: for the random fillers; default ``nnx.Rngs(0)``.
      param_dtype: dtype of the parameters.
      impl: the product implementation. ``"auto"`` (default), ``"loop"`` or ``"fused"``
        (read as ``"auto"``): a call with a guide (and ``mask``) takes the guided engine,
        ``ops.fused_*`` (the adapting kernel computed inside the tap loop, never
        materialised); a precomputed ``kernel=`` takes ``ops.pac_conv2d(..., impl)``.
        ``"patches"``: the plain-autodiff reference, ``ops.pac_kernel`` then the patches
        product, for guided calls too.

    Call: ``layer(x [B,H,W,Cin], guide [B,H,W,D])`` -> ``[B,Ho,Wo,Cout]``;
    ``layer(x, kernel=K)`` with a precomputed ``[B,Ho,Wo,kh,kw]`` kernel;
    ``layer(x, guide, mask=m)`` (``m`` ``[B,H,W,1]``, not differentiated) ->
    ``(y, output_mask [B,Ho,Wo,1])``.

    Raises:
      ValueError: bad constructor options; bad shapes, or both / neither of guide and kernel.
    """

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1,
                 bias=True, kernel_type="gaussian", smooth_kernel_type="none",
                 normalize_kernel=False, shared_filters=False, filler="uniform",
                 native_impl=False, *, rngs: Optional[nnx.Rngs] = None,
                 param_dtype=jnp.float32, impl="auto"):
        if filler == "linear":
            raise ValueError('filler="linear" is only available for PacConvTranspose2d')
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation, 0,
                         False, bias, kernel_type, smooth_kernel_type, normalize_kernel,
                         shared_filters, filler, rngs, param_dtype, impl)


class PacConvTranspose2d(_PacConvBase):
    """Pixel-adaptive transposed convolution layer (``pac.PacConvTranspose2d``).

    Arguments as :class:`PacConv2d` plus ``output_padding``; ``filler="linear"`` gives bilinear
    upsampling weights (``in == out`` channels). The weight is ``[kh, kw, Cin, Cout]`` (from
    the original's IOHW) and, as in the original, is **not** spatially flipped.

    Call: ``layer(x [B,h,w,Cin], guide [B,Ho,Wo,D])`` with the guide on the *output* grid,
    ``Ho = (h - 1) s - 2p + d (k - 1) + 1 + output_padding``; or ``layer(x, kernel=K)``;
    ``layer(x, guide, mask=m)`` with ``m`` ``[B,h,w,1]`` -> ``(y, output_mask)``.
    """

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0,
                 output_padding=0, dilation=1, bias=True, kernel_type="gaussian",
                 smooth_kernel_type="none", normalize_kernel=False, shared_filters=False,
                 filler="uniform", native_impl=False, *, rngs: Optional[nnx.Rngs] = None,
                 param_dtype=jnp.float32, impl="auto"):
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation,
                         output_padding, True, bias, kernel_type, smooth_kernel_type,
                         normalize_kernel, shared_filters, filler, rngs, param_dtype, impl)


class PacPool2d(_PacBase):
    """Pixel-adaptive pooling layer (``pac.PacPool2d``): ``y = sum_t K_t x_t`` per channel.

    Args:
      kernel_size, stride, padding, dilation: as :class:`PacConv2d`.
      kernel_type, smooth_kernel_type, normalize_kernel: as :class:`PacConv2d`.
      channel_wise: one adapting kernel per channel (guide channels == x channels).
      filler: accepted for compatibility (a pool has no weights).
      out_channels: number of channels; needed (> 0) for learnable channel-wise ``inv``
        parameters ``[C]``.
      native_impl: ignored.
      rngs, param_dtype: as :class:`PacConv2d`.
      impl: as :class:`PacConv2d`; the guided engine is ``ops.fused_pac_conv2d`` with one
        all-ones filter shared by the channels (the same sum; channel-wise kernels too).

    Call: ``layer(x [B,H,W,C], guide [B,H,W,D])`` -> ``[B,Ho,Wo,C]``; ``layer(x, kernel=K)``;
    ``layer(x, guide, mask=m)`` -> ``(y, output_mask)``.
    """

    def __init__(self, kernel_size, stride=1, padding=0, dilation=1, kernel_type="gaussian",
                 smooth_kernel_type="none", channel_wise=False, filler="uniform",
                 out_channels=-1, normalize_kernel=False, native_impl=False, *,
                 rngs: Optional[nnx.Rngs] = None, param_dtype=jnp.float32, impl="auto"):
        if filler not in FILLERS:
            raise ValueError(f"filler must be one of {FILLERS}, got {filler!r}")
        super().__init__(kernel_size, stride, padding, dilation, 0, False, kernel_type,
                         smooth_kernel_type, channel_wise, normalize_kernel, int(out_channels),
                         param_dtype, impl)
        self.out_channels = int(out_channels)
        self.filler = filler

    def _guided(self, x, *, guide, mask):
        # Pooling is the PAC convolution with one all-ones filter shared by the channels.
        ones = jnp.ones((*self.kernel_size, 1, 1), jnp.result_type(x))
        return ops.fused_pac_conv2d(x, guide, ones, shared_filters=True,
                                    normalize=self.normalize_kernel, mask=mask,
                                    channel_wise=self.channel_wise, **self._geometry(),
                                    **self._kernel_options())

    def _product(self, x, *, kernel):
        return ops.pac_pool2d(x, kernel, kernel_size=self.kernel_size,
                              impl=self._product_impl(), **self._geometry())


class _NormalizedBase(_PacBase):
    """Weights of the PPAC layers: ``weight``, ``weight_normalization`` (log-weights), ``bias``."""

    def __init__(self, in_channels, out_channels, kernel_size, padding, bias, kernel_type,
                 shared_filters, rngs, param_dtype, impl):
        self.in_channels, self.out_channels = _check_in_out(in_channels, out_channels,
                                                            shared_filters)
        super().__init__(kernel_size, 1, padding, 1, 0, False, kernel_type, "none", False,
                         False, 0, param_dtype, impl)
        self.shared_filters = bool(shared_filters)
        rng = _numpy_rng(rngs)
        kh, kw = self.kernel_size
        shape = (kh, kw, 1, 1) if shared_filters else (kh, kw, in_channels, out_channels)
        fan_in = in_channels * kh * kw
        w = np.abs(fillers.uniform_weight(rng, shape, fan_in, np.float64))
        self.weight = nnx.Param(jnp.asarray(w, param_dtype), torch_layout="OIHW")
        self.weight_normalization = nnx.Param(jnp.asarray(np.log(w), param_dtype),
                                              torch_layout="OIHW")
        if bias:
            b = fillers.uniform_weight(rng, (out_channels,), fan_in)
            self.bias = nnx.Param(jnp.asarray(b, param_dtype), torch_layout="same")
        else:
            self.bias = None

    def _weights(self):
        return (self.weight[...], self.weight_normalization[...],
                None if self.bias is None else self.bias[...])

    def _options(self):
        return dict(padding=self.padding, shared_filters=self.shared_filters)


class ProbPacConv2d(_NormalizedBase):
    """Probabilistic PAC layer (``probabilistic_pac.ProbPacConv2d``).

    ``y = pac(x * c, K, W) / max(sum_t K_t c_t exp(W_norm)_t, 1e-20) + bias`` with the adapting
    kernel ``K`` of the guide (zero-padded guidance, stride 1, dilation 1).

    Args:
      in_channels, out_channels, kernel_size, padding, bias: as :class:`PacConv2d`.
      kernel_type: ``"gaussian"`` or ``"inv_..."``.
      shared_filters: ``weight`` and ``weight_normalization`` are ``[kh, kw, 1, 1]``.
      rngs, param_dtype, impl: as :class:`PacConv2d` (guided calls: ``ops.fused_prob_pac_conv2d``).

    Initialisation: ``W = |U(-s, s)|``, ``W_norm = log W``, bias ``U(-s, s)``,
    ``s = 1 / sqrt(Cin kh kw)``.

    Call: ``layer(x [B,H,W,Cin], confidence [B,H,W,1], guide [B,H,W,D])`` -> ``[B,Ho,Wo,Cout]``,
    or ``layer(x, confidence, kernel=K)``.
    """

    def __init__(self, in_channels, out_channels, kernel_size, padding=0, bias=True,
                 kernel_type="gaussian", shared_filters=False, *,
                 rngs: Optional[nnx.Rngs] = None, param_dtype=jnp.float32, impl="auto"):
        super().__init__(in_channels, out_channels, kernel_size, padding, bias, kernel_type,
                         shared_filters, rngs, param_dtype, impl)

    def __call__(self, x, confidence, guide=None, *, kernel=None):
        return self._run((x, confidence), guide, kernel, None)

    def _guided(self, x, confidence, *, guide, mask):
        return ops.fused_prob_pac_conv2d(x, confidence, guide, *self._weights(),
                                         **self._options(), **self._kernel_options())

    def _product(self, x, confidence, *, kernel):
        return ops.prob_pac_conv2d(x, confidence, kernel, *self._weights(), **self._options(),
                                   impl=self._product_impl())


class NormalizedPacConv2d(_NormalizedBase):
    """Normalised PAC layer (``probabilistic_pac.NormalizedPacConv2d``).

    ``y = pac(x, K, W) / max(sum_t K_t exp(W_norm)_t, 1e-20) + bias``; out-of-image taps count
    in the denominator (as in the original). Arguments as :class:`ProbPacConv2d` (guided calls:
    ``ops.fused_normalized_pac_conv2d``).

    Call: ``layer(x [B,H,W,Cin], guide [B,H,W,D])`` -> ``[B,Ho,Wo,Cout]``, or
    ``layer(x, kernel=K)``.
    """

    def __init__(self, in_channels, out_channels, kernel_size, padding=0, bias=True,
                 kernel_type="gaussian", shared_filters=False, *,
                 rngs: Optional[nnx.Rngs] = None, param_dtype=jnp.float32, impl="auto"):
        super().__init__(in_channels, out_channels, kernel_size, padding, bias, kernel_type,
                         shared_filters, rngs, param_dtype, impl)

    def __call__(self, x, guide=None, *, kernel=None):
        return self._run((x,), guide, kernel, None)

    def _guided(self, x, *, guide, mask):
        return ops.fused_normalized_pac_conv2d(x, guide, *self._weights(), **self._options(),
                                               **self._kernel_options())

    def _product(self, x, *, kernel):
        return ops.normalized_pac_conv2d(x, kernel, *self._weights(), **self._options(),
                                         impl=self._product_impl())


class Conv2d(nnx.Module):
    """Plain convolution mirroring ``torch.nn.Conv2d`` (names ``weight`` OIHW, ``bias``).

    PyTorch's default initialisation (``U(-s, s)``, ``s = 1/sqrt(Cin kh kw)``, weight and
    bias), or ``filler="zero"`` (weight and bias 0, e.g. FCN-8s' ``_initialize_weights``).
    Call: ``layer(x [B,H,W,Cin])`` -> ``[B,Ho,Wo,Cout]`` (zero padding).
    """

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1,
                 bias=True, *, rngs: Optional[nnx.Rngs] = None, param_dtype=jnp.float32,
                 filler: str = "uniform"):
        if filler not in ("uniform", "zero"):
            raise ValueError(f'filler must be "uniform" or "zero", got {filler!r}')
        self.in_channels = _check_channels(in_channels, "in_channels")
        self.out_channels = _check_channels(out_channels, "out_channels")
        self.kernel_size = as_pair(kernel_size, "kernel_size")
        self.stride = as_pair(stride, "stride")
        self.padding = as_pair(padding, "padding")
        self.dilation = as_pair(dilation, "dilation")
        kh, kw = self.kernel_size
        shape = (kh, kw, self.in_channels, self.out_channels)
        if filler == "zero":
            self.weight = nnx.Param(jnp.zeros(shape, param_dtype), torch_layout="OIHW")
            self.bias = (nnx.Param(jnp.zeros((self.out_channels,), param_dtype),
                                   torch_layout="same") if bias else None)
            return
        rng = _numpy_rng(rngs)
        fan_in = self.in_channels * kh * kw
        w = fillers.uniform_weight(rng, shape, fan_in)
        self.weight = nnx.Param(jnp.asarray(w, param_dtype), torch_layout="OIHW")
        self.bias = (nnx.Param(jnp.asarray(fillers.uniform_weight(rng, (self.out_channels,),
                                                                  fan_in), param_dtype),
                               torch_layout="same")
                     if bias else None)

    def __call__(self, x):
        if x.ndim != 4 or x.shape[-1] != self.in_channels:
            raise ValueError(f"x must be [B, H, W, {self.in_channels}], got {x.shape}")
        w = self.weight[...]
        dtype = jnp.result_type(x, w)
        y = lax.conv_general_dilated(
            x.astype(dtype), w.astype(dtype), self.stride,
            [(p, p) for p in self.padding], rhs_dilation=self.dilation,
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
            precision=matmul_precision())
        if self.bias is not None:
            y = y + self.bias[...].astype(dtype)
        return y


class ReLU(nnx.Module):
    """``torch.nn.ReLU`` as a list entry (keeps the original's ``Sequential`` indices)."""

    def __call__(self, x):
        return jax.nn.relu(x)


__all__ = [
    "Buffer",
    "Conv2d",
    "NormalizedPacConv2d",
    "PacConv2d",
    "PacConvTranspose2d",
    "PacPool2d",
    "ProbPacConv2d",
    "ReLU",
]
