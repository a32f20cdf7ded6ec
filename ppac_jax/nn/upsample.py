"""Joint upsampling networks of the PAC paper (NVlabs/pacnet ``task_jointUpsampling/models.py``).

:class:`PacJointUpsample`, :class:`PacJointUpsampleLite`, :class:`DJIF`, :class:`DJIFWide`,
:class:`JointBilateral` and :class:`Bilinear` share one call::

    model(target_low [B, h, w, Ct], guide [B, f*h, f*w, G]) -> [B, f*h, f*w, Ct]

Attribute names are the original state-dict names (``branch_t.conv1.weight``,
``up_convts.0.weight``, ``branch_joint.4.bias``, ``convt.weight``), so
:func:`ppac_jax.convert.load_torch_weights` / ``export_torch_weights`` move weights both ways.

Multi-channel targets (SPEC_wave2.md 1.1): a model built with ``channels=1`` upsamples a
``Ct``-channel target (2-channel flow) channel by channel with the same guide, as the original
does by folding the channels into the batch; a model built with ``channels=Ct`` processes the
channels jointly (the original crashes there).
"""

from __future__ import annotations

import math
from typing import Optional, Sequence, Union

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ppac_jax import ops
from ppac_jax.nn.layers import Conv2d, PacConvTranspose2d, ReLU
from ppac_jax.nn.norm import BatchNorm2d

IntOrSeq = Union[int, Sequence[int]]

__all__ = ["PacJointUpsample", "PacJointUpsampleLite", "DJIF", "DJIFWide", "JointBilateral",
           "Bilinear", "apply_model", "create_model", "MODEL_NAMES"]

MODEL_NAMES = ("PacJointUpsample", "PacJointUpsampleLite", "DJIF", "DJIFWide", "Bilinear",
               "JBU_<kernel_size>_<scale_color>_<scale_space>")


def _check_inputs(target_low, guide, factor, channels):
    if getattr(target_low, "ndim", None) != 4:
        raise ValueError(f"target_low must be [B, h, w, Ct], got shape "
                         f"{getattr(target_low, 'shape', None)}")
    if getattr(guide, "ndim", None) != 4:
        raise ValueError(f"guide must be [B, H, W, G], got shape {getattr(guide, 'shape', None)}")
    b, h, w, ct = target_low.shape
    if guide.shape[0] != b:
        raise ValueError(f"guide batch {guide.shape[0]} != target_low batch {b}")
    if guide.shape[1:3] != (factor * h, factor * w):
        raise ValueError(f"guide must be factor x the low-res size: expected "
                         f"{(factor * h, factor * w)}, got {tuple(guide.shape[1:3])} "
                         f"(use nn.apply_model for other sizes)")
    if channels is not None and ct != channels and channels != 1:
        raise ValueError(f"target_low has {ct} channels; a model built with channels={channels} "
                         f"takes {channels} (channels=1 models take any number)")


def _fold(target_low, channels):
    """``[B, h, w, Ct] -> ([B*Ct, h, w, 1], Ct)`` (folded index ``b*Ct + c``) when needed."""
    ct = target_low.shape[-1]
    if channels != 1 or ct == 1:
        return target_low, 1
    b, h, w, _ = target_low.shape
    return jnp.moveaxis(target_low, -1, 1).reshape(b * ct, h, w, 1), ct


def _unfold(y, reps):
    if reps == 1:
        return y
    bc, h, w, _ = y.shape
    return jnp.moveaxis(y.reshape(bc // reps, reps, h, w), 1, -1)


def _repeat(guide, reps):
    return guide if reps == 1 else jnp.repeat(guide, reps, axis=0)


def _log2_factor(factor) -> int:
    if int(factor) != factor or factor < 1:
        raise ValueError(f"factor must be a positive power of 2, got {factor!r}")
    u = int(round(math.log2(factor)))
    if 2 ** u != factor:
        raise ValueError(f"factor must be a power of 2, got {factor!r}")
    return u


def _widths(value: IntOrSeq, n: int, name: str):
    if isinstance(value, (int, np.integer)):
        return (int(value),) * n
    value = tuple(int(v) for v in value)
    if len(value) != n:
        raise ValueError(f"{name} must be an int or a sequence of {n} ints, got {value!r}")
    return value


class _ConvBranch(nnx.Module):
    """Convs ``conv1..convN`` ('same' padding), each followed by ``bn{l}`` when ``bn``, ReLU
    between (the original's named Sequential)."""

    def __init__(self, channels, kernel_size, relu_last, rngs, param_dtype, bn=False):
        self.n = len(channels) - 1
        self.relu_last = relu_last
        self.bn = bool(bn)
        for i in range(1, len(channels)):
            setattr(self, f"conv{i}", Conv2d(channels[i - 1], channels[i], kernel_size,
                                             padding=kernel_size // 2, rngs=rngs,
                                             param_dtype=param_dtype))
            if self.bn:
                setattr(self, f"bn{i}", BatchNorm2d(channels[i], param_dtype=param_dtype))

    def __call__(self, x):
        for i in range(1, self.n + 1):
            x = getattr(self, f"conv{i}")(x)
            if self.bn:
                x = getattr(self, f"bn{i}")(x)
            if i < self.n or self.relu_last:
                x = jax.nn.relu(x)
        return x


class PacJointUpsample(nnx.Module):
    """PAC joint upsampling network (``models.PacJointUpsample``, PAC paper section 5.1).

    A target branch (convs on the low-resolution target), a guidance branch (convs on the
    high-resolution guide, ``k_ch`` output channels per 2x stage), ``log2(factor)`` stages of
    stride-2 :class:`PacConvTranspose2d` (Gaussian kernel on the stage's guide slice, bilinearly
    down-scaled to the stage's resolution, then ReLU) and a final conv branch.
    SPEC_wave2.md 1.2.

    Args:
      factor: upsampling factor, a power of 2.
      channels: target channels (1: any ``Ct`` upsampled channel by channel).
      guide_channels: guide channels ``G``.
      n_t_layers, n_g_layers, n_f_layers: conv layers of the target / guidance / final branch
        (``n_g_layers >= 1``, ``n_f_layers >= 1``).
      n_t_filters, n_g_filters, n_f_filters: widths, an int or a sequence of length
        ``n_t_layers``, ``n_g_layers - 1`` and ``n_f_layers + log2(factor) - 1``.
      k_ch: guidance channels per upsampling stage.
      f_sz_1: (odd) kernel size of the convs; f_sz_2: (odd) kernel size of the PAC stages.
      t_bn, g_bn, u_bn, f_bn: batch normalisation (:class:`~ppac_jax.nn.BatchNorm2d`,
        PyTorch's defaults) after every conv of the target / guidance branch
        (``branch_t.bn{l}``, ``branch_g.bn{l}``), after every upsampling stage before its ReLU
        (``up_bns.{i}``) and after every conv of the final branch (``branch_f.bn{l}``), also
        after the last conv of a branch, as the original. Off by default. A model with
        BN starts in training mode (batch statistics, running statistics updated);
        ``model.eval()`` switches to the running statistics. The target-side BNs see the
        channel-folded batch (``B * Ct`` images for a ``Ct``-channel target, SPEC_wave2 1.1).
      rngs: initialisation (default ``nnx.Rngs(0)``): PyTorch's default for the convs, the
        ``uniform`` filler for the PAC stages.
      param_dtype: parameter dtype (float64 weights make the model compute in float64).

    Call: ``model(target_low [B, h, w, Ct], guide [B, f*h, f*w, G]) -> [B, f*h, f*w, Ct]``.

    Raises:
      ValueError: bad factor / layer counts / widths, even ``f_sz_1``, or inputs of the wrong
        shape.
    """

    def __init__(self, factor, channels=1, guide_channels=3, n_t_layers=3, n_g_layers=3,
                 n_f_layers=2, n_t_filters=32, n_g_filters=32, n_f_filters=32, k_ch=16,
                 f_sz_1=5, f_sz_2=5, t_bn=False, g_bn=False, u_bn=False, f_bn=False, *,
                 rngs: Optional[nnx.Rngs] = None, param_dtype=jnp.float32, impl="auto"):
        u = _log2_factor(factor)
        if n_g_layers < 1 or n_f_layers < 1 or n_t_layers < 0:
            raise ValueError(f"need n_g_layers >= 1, n_f_layers >= 1, n_t_layers >= 0, got "
                             f"{n_g_layers}, {n_f_layers}, {n_t_layers}")
        if f_sz_1 % 2 != 1 or f_sz_2 % 2 != 1:
            raise ValueError(f"f_sz_1 and f_sz_2 must be odd, got {f_sz_1} and {f_sz_2}")
        rngs = nnx.Rngs(0) if rngs is None else rngs
        self.factor = int(factor)
        self.channels = int(channels)
        self.k_ch = int(k_ch)
        self.u = u
        t = (channels,) + _widths(n_t_filters, n_t_layers, "n_t_filters")
        g = (guide_channels,) + _widths(n_g_filters, n_g_layers - 1, "n_g_filters") + (k_ch * u,)
        fc = (t[-1],) + _widths(n_f_filters, n_f_layers + u - 1, "n_f_filters") + (channels,)
        self.branch_t = _ConvBranch(t, f_sz_1, False, rngs, param_dtype, t_bn)
        self.branch_g = _ConvBranch(g, f_sz_1, False, rngs, param_dtype, g_bn)
        self.up_convts = nnx.List([
            PacConvTranspose2d(fc[i], fc[i + 1], f_sz_2, stride=2, padding=(f_sz_2 - 1) // 2,
                               output_padding=f_sz_2 % 2, bias=True, kernel_type="gaussian",
                               normalize_kernel=False, shared_filters=False, filler="uniform",
                               rngs=rngs, param_dtype=param_dtype, impl=impl)
            for i in range(u)])
        self.up_bns = nnx.List([BatchNorm2d(fc[i + 1], param_dtype=param_dtype)
                                for i in range(u)] if u_bn else [])
        self.branch_f = _ConvBranch(fc[u:], f_sz_1, False, rngs, param_dtype, f_bn)

    def __call__(self, target_low, guide):
        _check_inputs(target_low, guide, self.factor, self.channels)
        x, reps = _fold(target_low, self.channels)
        x = self.branch_t(x)
        g = self.branch_g(guide)
        h, w = target_low.shape[1:3]
        for i, layer in enumerate(self.up_convts):
            size = (h * 2 ** (i + 1), w * 2 ** (i + 1))
            gi = ops.resize_bilinear(g[..., i * self.k_ch:(i + 1) * self.k_ch], size)
            x = layer(x, _repeat(gi, reps))
            if len(self.up_bns):
                x = self.up_bns[i](x)
            x = jax.nn.relu(x)
        return _unfold(self.branch_f(x), reps)


# n_g_filters, n_t_filters, n_f_filters, k_ch of the Lite variant per factor (SPEC_wave2 1.3)
_LITE = {
    4: ((12, 22), (12, 16, 22), (12, 16, 22), 12),
    8: ((12, 16), (12, 16, 16), (12, 16, 16, 20), 12),
    16: ((8, 16), (8, 16, 16), (8, 16, 16, 16, 16), 10),
}


class PacJointUpsampleLite(PacJointUpsample):
    """:class:`PacJointUpsample` with the original's reduced widths (``models.PacJointUpsampleLite``).

    About 56k parameters for factor 4, 8 or 16 (SPEC_wave2.md 1.3); other factors raise
    ``ValueError``. Call as :class:`PacJointUpsample`.
    """

    def __init__(self, factor, channels=1, guide_channels=3, *,
                 rngs: Optional[nnx.Rngs] = None, param_dtype=jnp.float32, impl="auto"):
        if factor not in _LITE:
            raise ValueError(f"PacJointUpsampleLite supports factor 4, 8 or 16, got {factor!r}")
        n_g, n_t, n_f, k_ch = _LITE[factor]
        super().__init__(factor, channels, guide_channels, n_t_filters=n_t, n_g_filters=n_g,
                         n_f_filters=n_f, k_ch=k_ch, rngs=rngs, param_dtype=param_dtype,
                         impl=impl)


def _djif_branch(channels, kernel_sizes, paddings, rngs, param_dtype):
    """conv, ReLU, conv, ReLU, conv (indices 0, 2, 4 as the original's Sequential)."""
    layers = []
    for i in range(3):
        layers.append(Conv2d(channels[i], channels[i + 1], kernel_sizes[i], padding=paddings[i],
                             rngs=rngs, param_dtype=param_dtype))
        if i < 2:
            layers.append(ReLU())
    return nnx.List(layers)


def _run(layers, x):
    for layer in layers:
        x = layer(x)
    return x


class DJIF(nnx.Module):
    """Deep joint image filter (``models.DJIF``; Li et al. ECCV 2016) as in the PAC code.

    The target (bilinearly upsampled by ``factor`` when it is smaller than the guide) and the
    guide each go through conv ``fs[0]`` -> ReLU -> conv ``fs[1]`` -> ReLU -> conv ``fs[2]``
    (widths ``ns_tg``, zero padding ``q = (S//3, S//3, S - 2(S//3))``, ``S = sum(fs//2)``: the
    1x1 conv pads by 2 as in the original); the concatenated features go through convs
    ``fs`` with 'same' padding (widths ``ns_f``, then ``channels``). SPEC_wave2.md 1.4.

    Args:
      factor: upsampling factor (only sets the pre-upsampling).
      channels, guide_channels: as :class:`PacJointUpsample`.
      fs: three odd kernel sizes. ns_tg: widths of the target/guide branches.
      ns_f: two widths of the joint branch.
      rngs, param_dtype: as :class:`PacJointUpsample` (PyTorch default init).

    Call: ``model(target_low [B, h, w, Ct], guide [B, f*h, f*w, G]) -> [B, f*h, f*w, Ct]``; a
    target already at the guide's size is used as is.
    """

    def __init__(self, factor, channels=1, guide_channels=3, fs=(9, 1, 5), ns_tg=(96, 48, 1),
                 ns_f=(64, 32), *, rngs: Optional[nnx.Rngs] = None, param_dtype=jnp.float32):
        fs = tuple(int(k) for k in fs)
        if len(fs) != 3 or any(k % 2 != 1 or k < 1 for k in fs):
            raise ValueError(f"fs must be three odd kernel sizes, got {fs!r}")
        ns_tg = tuple(int(n) for n in ns_tg)
        ns_f = tuple(int(n) for n in ns_f)
        if len(ns_tg) != 3 or len(ns_f) != 2:
            raise ValueError(f"ns_tg needs 3 widths and ns_f 2, got {ns_tg!r} and {ns_f!r}")
        if int(factor) != factor or factor < 1:
            raise ValueError(f"factor must be a positive int, got {factor!r}")
        rngs = nnx.Rngs(0) if rngs is None else rngs
        self.factor = int(factor)
        self.channels = int(channels)
        p = tuple(k // 2 for k in fs)
        s = sum(p)
        q = (s // 3, s // 3, s - 2 * (s // 3))
        self.branch_t = _djif_branch((channels,) + ns_tg, fs, q, rngs, param_dtype)
        self.branch_g = _djif_branch((guide_channels,) + ns_tg, fs, q, rngs, param_dtype)
        self.branch_joint = _djif_branch((2 * ns_tg[-1],) + ns_f + (channels,), fs, p, rngs,
                                         param_dtype)

    def __call__(self, target_low, guide):
        if getattr(target_low, "ndim", None) == 4 and getattr(guide, "ndim", None) == 4 and \
                target_low.shape[1:3] == guide.shape[1:3]:
            _check_inputs(target_low, guide, 1, self.channels)
            x, reps = _fold(target_low, self.channels)
        else:
            _check_inputs(target_low, guide, self.factor, self.channels)
            x, reps = _fold(target_low, self.channels)
            x = ops.resize_bilinear(x, guide.shape[1:3])
        t = _run(self.branch_t, x)
        g = _repeat(_run(self.branch_g, guide), reps)
        return _unfold(_run(self.branch_joint, jnp.concatenate([t, g], axis=-1)), reps)


class DJIFWide(DJIF):
    """:class:`DJIF` with ``ns_tg=(256, 128, 1)``, ``ns_f=(256, 128)`` (``models.DJIFWide``)."""

    def __init__(self, factor, channels=1, guide_channels=3, *,
                 rngs: Optional[nnx.Rngs] = None, param_dtype=jnp.float32):
        super().__init__(factor, channels, guide_channels, ns_tg=(256, 128, 1), ns_f=(256, 128),
                         rngs=rngs, param_dtype=param_dtype)


class JointBilateral(nnx.Module):
    """Joint bilateral upsampling (Kopf et al. 2007) as one fixed PAC transposed convolution
    (``models.JointBilateral``; SPEC_wave2.md 1.5).

    Output pixel ``i`` is ``sum_t W_t K_t x_t / sum_t K_t [tap t is a real sample]`` over the
    ``k x k`` window of the zero-inserted low-resolution target, with
    ``K = exp(-0.5 ||g_j - g_i||^2)`` on the guide features
    ``(scale_color * guide, scale_space * y, scale_space * x)`` (``y``, ``x`` the integer
    high-resolution pixel indices). Low-resolution sample ``a`` sits at high-resolution
    position ``f a + f/2 - 1``.

    Args (the original's constructor order; the original's model name
    ``JBU_<k>_<scale_color>_<scale_space>`` puts the colour scale first):
      factor: upsampling factor f.
      channels: target channels (1: any ``Ct`` channel by channel).
      kernel_size: odd ``k >= f - 1``.
      scale_space: spatial scale (1 / sigma in high-resolution pixels).
      scale_color: colour scale (1 / sigma in guide units).
      rngs: unused (deterministic init); param_dtype: parameter dtype.

    The weight ``convt.weight`` (IOHW ``[channels, channels, k, k]``) starts at 1 on the
    channel diagonal, 0 elsewhere, and is trainable.

    Call: ``model(target_low [B, h, w, Ct], guide [B, f*h, f*w, G]) -> [B, f*h, f*w, Ct]``.
    """

    def __init__(self, factor, channels, kernel_size, scale_space, scale_color, *,
                 rngs: Optional[nnx.Rngs] = None, param_dtype=jnp.float32, impl="auto"):
        if int(factor) != factor or factor < 1:
            raise ValueError(f"factor must be a positive int, got {factor!r}")
        k = int(kernel_size)
        if k % 2 != 1 or k < factor - 1:
            raise ValueError(f"kernel_size must be odd and >= factor - 1 = {factor - 1}, got "
                             f"{kernel_size!r}")
        self.factor = int(factor)
        self.channels = int(channels)
        self.kernel_size = k
        self.scale_space = float(scale_space)
        self.scale_color = float(scale_color)
        f = self.factor
        self.convt = PacConvTranspose2d(channels, channels, k, stride=f,
                                        padding=1 + (k - f - 1) // 2,
                                        output_padding=(k - f) % 2, dilation=1, bias=False,
                                        normalize_kernel=True, rngs=rngs,
                                        param_dtype=param_dtype, impl=impl)
        eye = np.zeros((k, k, channels, channels))
        eye[:, :, np.arange(channels), np.arange(channels)] = 1.0
        self.convt.weight.set_value(jnp.asarray(eye, param_dtype))

    def __call__(self, target_low, guide):
        _check_inputs(target_low, guide, self.factor, self.channels)
        x, reps = _fold(target_low, self.channels)
        b, hh, ww, _ = guide.shape
        y, xx = jnp.meshgrid(jnp.arange(hh, dtype=guide.dtype), jnp.arange(ww, dtype=guide.dtype),
                             indexing="ij")
        pos = jnp.broadcast_to(jnp.stack([y, xx], axis=-1)[None], (b, hh, ww, 2))
        features = jnp.concatenate([guide * self.scale_color, pos * self.scale_space], axis=-1)
        return _unfold(self.convt(x, _repeat(features, reps)), reps)


class Bilinear(nnx.Module):
    """Bilinear upsampling by ``factor`` (``models.Bilinear``): PyTorch ``interpolate(
    scale_factor=factor, mode="bilinear", align_corners=False)``; ignores the guide, no
    parameters.

    Call: ``model(target_low [B, h, w, Ct], guide) -> [B, f*h, f*w, Ct]``.
    """

    def __init__(self, factor, *, rngs: Optional[nnx.Rngs] = None, param_dtype=jnp.float32):
        if int(factor) != factor or factor < 1:
            raise ValueError(f"factor must be a positive int, got {factor!r}")
        self.factor = int(factor)

    def __call__(self, target_low, guide=None):
        if getattr(target_low, "ndim", None) != 4:
            raise ValueError(f"target_low must be [B, h, w, Ct], got shape "
                             f"{getattr(target_low, 'shape', None)}")
        h, w = target_low.shape[1:3]
        return ops.resize_bilinear(target_low, (self.factor * h, self.factor * w))


def apply_model(model, target_low, guide, factor):
    """Run a joint-upsampling model on a guide of any size (``main.apply_model``).

    If the guide is not ``factor`` times the low-resolution size, it is bilinearly resized to
    ``(f*h, f*w)``, the model runs, and its output is bilinearly resized back to the guide's
    ``(H, W)`` (SPEC_wave2.md 1.9).

    Args:
      model: a model with the joint-upsampling call.
      target_low: ``[B, h, w, Ct]``. guide: ``[B, H, W, G]``. factor: int.

    Returns:
      ``[B, H, W, Ct]``.
    """
    for name, a in (("target_low", target_low), ("guide", guide)):
        if getattr(a, "ndim", None) != 4:
            raise ValueError(f"{name} must be rank 4 (NHWC), got shape {getattr(a, 'shape', None)}")
    h, w = target_low.shape[1:3]
    size = tuple(guide.shape[1:3])
    want = (factor * h, factor * w)
    if size == want:
        return model(target_low, guide)
    out = model(target_low, ops.resize_bilinear(guide, want))
    return ops.resize_bilinear(out, size)


def create_model(name: str, factor: int, *, channels: int = 1, guide_channels: int = 3,
                 rngs: Optional[nnx.Rngs] = None, param_dtype=jnp.float32):
    """A model by the original's ``--model`` name: a class name above or
    ``JBU_<kernel_size>_<scale_color>_<scale_space>`` (colour scale first, as main.py).

    Raises:
      ValueError: unknown name or malformed ``JBU_`` name.
    """
    kw = dict(rngs=rngs, param_dtype=param_dtype)
    if name.startswith("JBU_"):
        parts = name.split("_")
        try:
            k, s_c, s_s = int(parts[1]), float(parts[2]), float(parts[3])
            if len(parts) != 4:
                raise IndexError
        except (IndexError, ValueError):
            raise ValueError(f"JointBilateral model names are JBU_<kernel_size>_<scale_color>_"
                             f"<scale_space>, got {name!r}") from None
        return JointBilateral(factor, channels, k, s_s, s_c, **kw)
    if name == "Bilinear":
        return Bilinear(factor, **kw)
    classes = {"PacJointUpsample": PacJointUpsample, "PacJointUpsampleLite": PacJointUpsampleLite,
               "DJIF": DJIF, "DJIFWide": DJIFWide}
    if name not in classes:
        raise ValueError(f"model must be one of {MODEL_NAMES}, got {name!r}")
    return classes[name](factor, channels, guide_channels, **kw)
