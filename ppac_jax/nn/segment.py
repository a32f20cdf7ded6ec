"""FCN-8s segmentation networks (NVlabs/pacnet ``task_semanticSegmentation``), Flax NNX, NHWC.

* :class:`FCN8s`: the caffe-compatible VGG-16 FCN-8s (``conv1_1`` padding 100, crops 5 / 9 / 31,
  ceil-mode max pooling; pacnet ``fcn8s.FCN8s`` wrapped by ``models.FCN8s``);
* :class:`FCN8sAltPad`: "natural" paddings, no crops (``models.FCN8sAltPad``);
* :class:`FCN8sPac`: FCN8sAltPad with ``conv3_3``, ``conv4_3``, ``conv5_3`` hot-swapped to
  :class:`~ppac_jax.nn.PacConv2d` guided by ``relu2_2 * 1e-4`` and a fixed bilinear 8x
  upsampling (``models.FCN8sPac``, "PAC-FCN"); built with :func:`ppac_jax.nn.hot_swap`.

Attribute names are the original state-dict names (``conv1_1.weight`` ... ``fc7.bias``,
``score_fr``, ``score_pool3``, ``score_pool4``, ``upscore2``, ``upscore_pool4``,
``upscore8``) with ``torch_layout`` metadata, so :func:`ppac_jax.convert.load_torch_weights`
loads ``fcn8s_from_caffe.pth``-style state dicts. Semantics: SPEC_wave2.md section 2.1-2.3.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax import lax

from ppac_jax.nn import fillers
from ppac_jax.nn.layers import Conv2d, ReLU, _numpy_rng
from ppac_jax.ops import geometry as geo
from ppac_jax.ops.resample import max_pool_ceil, resize_bilinear

_INITS = ("original", "he")


class ConvTranspose2d(nnx.Module):
    """Plain transposed convolution mirroring ``torch.nn.ConvTranspose2d``.

    Weight ``[kh, kw, Cin, Cout]`` (HWIO; the original's ``[Cin, Cout, kh, kw]``, torch layout
    ``IOHW``), applied unflipped in the scatter form: output
    ``(n - 1) * stride - 2 * padding + dilation * (k - 1) + 1 + output_padding``.

    Args:
      in_channels, out_channels, kernel_size, stride, padding, output_padding, dilation, bias:
        as PyTorch.
      rngs, param_dtype: as the other layers.
      filler: ``"uniform"`` (PyTorch's default, ``U(-s, s)``, ``s = 1/sqrt(Cout kh kw)``),
        ``"zero"`` or ``"bilinear"`` (:func:`ppac_jax.nn.fillers.upsampling_weight`).

    Call: ``layer(x [B, h, w, Cin])`` -> ``[B, Ho, Wo, Cout]``.
    """

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0,
                 output_padding=0, bias=True, dilation=1, *, rngs: nnx.Rngs | None = None,
                 param_dtype=jnp.float32, filler: str = "uniform"):
        self.in_channels = int(in_channels)
        self.out_channels = int(out_channels)
        if self.in_channels < 1 or self.out_channels < 1:
            raise ValueError(f"in_channels and out_channels must be positive, got "
                             f"{in_channels}, {out_channels}")
        self.kernel_size = geo.check_positive(kernel_size, "kernel_size")
        self.stride = geo.check_positive(stride, "stride")
        self.padding = geo.check_non_negative(padding, "padding")
        self.output_padding = geo.check_non_negative(output_padding, "output_padding")
        self.dilation = geo.check_positive(dilation, "dilation")
        kh, kw = self.kernel_size
        shape = (kh, kw, self.in_channels, self.out_channels)
        if filler == "bilinear":
            if kh != kw:
                raise ValueError(f'filler="bilinear" needs a square kernel, got {kernel_size!r}')
            w = fillers.upsampling_weight(self.in_channels, self.out_channels, kh)
        elif filler == "zero":
            w = np.zeros(shape, np.float32)
        elif filler == "uniform":
            w = fillers.uniform_weight(_numpy_rng(rngs), shape, self.out_channels * kh * kw)
        else:
            raise ValueError(f'filler must be "uniform", "zero" or "bilinear", got {filler!r}')
        self.weight = nnx.Param(jnp.asarray(w, param_dtype), torch_layout="IOHW")
        if bias:
            b = (np.zeros((self.out_channels,), np.float32) if filler != "uniform" else
                 fillers.uniform_weight(_numpy_rng(rngs), (self.out_channels,),
                                        self.out_channels * kh * kw))
            self.bias = nnx.Param(jnp.asarray(b, param_dtype), torch_layout="same")
        else:
            self.bias = None

    def __call__(self, x):
        if x.ndim != 4 or x.shape[-1] != self.in_channels:
            raise ValueError(f"x must be [B, h, w, {self.in_channels}], got {x.shape}")
        geo.transposed_geometry(x.shape[1:3], self.kernel_size, self.stride, self.padding,
                                self.output_padding, self.dilation)
        w = self.weight[...]
        dtype = jnp.result_type(x, w)
        pads = [geo.transposed_pads(self.kernel_size[a], self.padding[a],
                                    self.output_padding[a], self.dilation[a]) for a in range(2)]
        y = lax.conv_general_dilated(
            x.astype(dtype), jnp.flip(w.astype(dtype), (0, 1)), (1, 1), pads,
            lhs_dilation=self.stride, rhs_dilation=self.dilation,
            dimension_numbers=("NHWC", "HWIO", "NHWC"), precision=lax.Precision.HIGHEST)
        if self.bias is not None:
            y = y + self.bias[...].astype(dtype)
        return y


# (name, in, out) of the VGG-16 convolutions, in order; None marks a pooling layer
_VGG = (("conv1_1", 3, 64), ("conv1_2", 64, 64), None,
        ("conv2_1", 64, 128), ("conv2_2", 128, 128), None,
        ("conv3_1", 128, 256), ("conv3_2", 256, 256), ("conv3_3", 256, 256), None,
        ("conv4_1", 256, 512), ("conv4_2", 512, 512), ("conv4_3", 512, 512), None,
        ("conv5_1", 512, 512), ("conv5_2", 512, 512), ("conv5_3", 512, 512), None)
_FC = 4096


def _scaled(channels: int, width: float) -> int:
    return channels if channels == 3 else max(1, int(round(channels * width)))


class FCN8s(nnx.Module):
    """FCN-8s, the caffe-compatible "pad 100" network (pacnet ``models.FCN8s``).

    VGG-16 body (every conv 3x3 padding 1 + ReLU, ``conv1_1`` padding 100), ceil-mode 2x2 max
    pooling, ``fc6`` 7x7 / ``fc7`` 1x1 (+ ReLU + channel dropout 0.5), ``score_fr``,
    ``upscore2`` (4/2) + ``score_pool4`` cropped at 5, ``upscore_pool4`` (4/2) +
    ``score_pool3`` cropped at 9, ``upscore8`` (16/8), output cropped at 31. Works for any
    input size.

    Args:
      num_classes: output channels ``n``.
      width: keyword-only channel multiplier of the VGG body and ``fc6`` / ``fc7`` (default 1:
        the real widths 64 ... 512, 4096); e.g. ``1/16`` for CPU runs.
      init: ``"original"`` (every conv weight and bias 0, transposed convs bilinear: the
        original ``_initialize_weights``, which expects pretrained weights to be loaded) or
        ``"he"`` (He-normal conv weights, zero biases, bilinear transposed convs: trainable
        from scratch).
      rngs: for ``init="he"`` and the dropout masks (default ``nnx.Rngs(0)``).
      param_dtype: parameter dtype (load float64 weights to compute in float64).

    Call: ``model(x [B, H, W, 3], out_crop=None, *, rngs=None)`` -> ``[B, H, W, n]`` class
    scores, or the top-left ``out_crop = (h', w')`` block. ``x`` is the BGR mean-subtracted
    image (pacnet ``DeepLabInputs``). ``model.eval()`` switches dropout off, ``model.train()``
    on. In training mode the dropout masks come from ``rngs`` (an ``nnx.Rngs``) when given,
    else from the module's own stream, which advances only eagerly or under NNX transforms
    (``nnx.jit`` / ``nnx.grad``): with ``nnx.merge`` inside a raw ``jax.grad`` pass ``rngs`` or
    use ``eval()``.

    Raises:
      ValueError: bad ``x`` shape, bad ``out_crop``, or (subclasses) sizes that are not
      multiples of 32.
    """

    _alt_pad = False

    def __init__(self, num_classes: int = 21, *, width: float = 1.0, init: str = "original",
                 rngs: nnx.Rngs | None = None, param_dtype=jnp.float32,
                 upsample: str = "learned"):
        if isinstance(num_classes, bool) or int(num_classes) != num_classes or num_classes < 1:
            raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
        if not (isinstance(width, (int, float)) and width > 0):
            raise ValueError(f"width must be a positive number, got {width!r}")
        if init not in _INITS:
            raise ValueError(f"init must be one of {_INITS}, got {init!r}")
        if upsample not in ("learned", "bilinear"):
            raise ValueError(f'upsample must be "learned" or "bilinear", got {upsample!r}')
        rngs = nnx.Rngs(0) if rngs is None else rngs
        n = self.num_classes = int(num_classes)
        self.width = float(width)
        self.init = init
        self.upsample = upsample
        conv = dict(param_dtype=param_dtype, filler="zero")
        alt = self._alt_pad
        for spec in _VGG:
            if spec is None:
                continue
            name, cin, cout = spec
            pad = 100 if (name == "conv1_1" and not alt) else 1
            setattr(self, name, Conv2d(_scaled(cin, width), _scaled(cout, width), 3,
                                       padding=pad, **conv))
            setattr(self, "relu" + name[4:], ReLU())
        c5, fc = _scaled(512, width), _scaled(_FC, width)
        self.fc6 = Conv2d(c5, fc, 7, padding=3 if alt else 0, **conv)
        self.relu6 = ReLU()
        self.drop6 = nnx.Dropout(0.5, broadcast_dims=(1, 2), rngs=rngs)
        self.fc7 = Conv2d(fc, fc, 1, **conv)
        self.relu7 = ReLU()
        self.drop7 = nnx.Dropout(0.5, broadcast_dims=(1, 2), rngs=rngs)
        self.score_fr = Conv2d(fc, n, 1, **conv)
        self.score_pool3 = Conv2d(_scaled(256, width), n, 1, **conv)
        self.score_pool4 = Conv2d(c5, n, 1, **conv)
        up = dict(bias=False, param_dtype=param_dtype, filler="bilinear")
        self.upscore2 = ConvTranspose2d(n, n, 4, stride=2, padding=1 if alt else 0, **up)
        self.upscore_pool4 = ConvTranspose2d(n, n, 4, stride=2, padding=1 if alt else 0, **up)
        self.upscore8 = ConvTranspose2d(n, n, 16, stride=8, padding=4 if alt else 0, **up)
        if init == "he":
            self._he_init(_numpy_rng(rngs), param_dtype)

    def _he_init(self, rng: np.random.Generator, param_dtype):
        for _, node in nnx.iter_graph(self):
            if isinstance(node, Conv2d):
                kh, kw, cin, cout = node.weight.shape
                std = np.sqrt(2.0 / (kh * kw * cin))
                node.weight.set_value(jnp.asarray(rng.normal(0, std, (kh, kw, cin, cout)),
                                                  param_dtype))

    # -----------------------------------------------------------------------------------------

    def _check_input(self, x):
        if getattr(x, "ndim", None) != 4 or x.shape[-1] != 3:
            raise ValueError(f"x must be [B, H, W, 3] (NHWC BGR image), got shape "
                             f"{getattr(x, 'shape', None)}")
        if self._alt_pad and (x.shape[1] % 32 or x.shape[2] % 32):
            raise ValueError(f"{type(self).__name__} needs H and W multiples of 32 (as the "
                             f"original), got {x.shape[1:3]}")

    def features(self, x, *, rngs=None):
        """``(pool3 [B, H/8, W/8, 256w], pool4 [.., 512w], fc7 output [.., 4096w])``."""
        h = x
        pools = []
        for spec in _VGG:
            if spec is None:
                h = max_pool_ceil(h)
                pools.append(h)
                continue
            name = spec[0]
            h = getattr(self, "relu" + name[4:])(getattr(self, name)(h))
        h = self.drop6(self.relu6(self.fc6(h)), rngs=rngs)
        h = self.drop7(self.relu7(self.fc7(h)), rngs=rngs)
        return pools[2], pools[3], h

    def __call__(self, x, out_crop: Sequence[int] | None = None, *, rngs=None):
        self._check_input(x)
        height, width = x.shape[1:3]
        pool3, pool4, h = self.features(x, rngs=rngs)
        up2 = self.upscore2(self.score_fr(h))
        s4 = self.score_pool4(pool4)
        if not self._alt_pad:
            s4 = s4[:, 5:5 + up2.shape[1], 5:5 + up2.shape[2]]
        up4 = self.upscore_pool4(up2 + s4)
        s3 = self.score_pool3(pool3)
        if not self._alt_pad:
            s3 = s3[:, 9:9 + up4.shape[1], 9:9 + up4.shape[2]]
        h = up4 + s3
        if self.upsample == "bilinear":
            out = resize_bilinear(h, (8 * h.shape[1], 8 * h.shape[2]))
        else:
            out = self.upscore8(h)
            if not self._alt_pad:
                out = out[:, 31:31 + height, 31:31 + width]
        if out.shape[1:3] != (height, width):
            raise ValueError(f"output size {out.shape[1:3]} != input size {(height, width)}")
        return top_left_crop(out, out_crop)


class FCN8sAltPad(FCN8s):
    """FCN-8s with "natural" padding (pacnet ``models.FCN8sAltPad``).

    ``conv1_1`` padding 1, ``fc6`` padding 3, ``upscore2`` / ``upscore_pool4`` padding 1,
    ``upscore8`` padding 4, no crops; same state-dict keys and shapes as :class:`FCN8s`.
    H and W must be multiples of 32 (``ValueError`` otherwise; the original crashes).
    Arguments and call as :class:`FCN8s`; ``upsample="bilinear"`` (keyword-only) replaces
    ``upscore8`` by a fixed bilinear 8x upsampling (the parameter stays, unused).
    """

    _alt_pad = True


class FCN8sPac(FCN8sAltPad):
    """PAC-FCN (pacnet ``models.FCN8sPac``, the paper's "hot-swapping").

    :class:`FCN8sAltPad` with ``conv3_3``, ``conv4_3``, ``conv5_3`` replaced by
    ``PacConv2d(C, C, 3, padding=1)`` (Gaussian kernel) guided by ``relu2_2``'s output times
    ``1e-4``, bilinearly resized to each layer's input (1/4, 1/8, 1/16 of the input), and
    ``upscore8`` replaced by a fixed bilinear 8x upsampling (``upscore8.weight`` is kept, with a
    zero gradient). Equal to ``hot_swap(FCN8sAltPad(n, upsample="bilinear"), ["conv3_3",
    "conv4_3", "conv5_3"], guide_from="relu2_2", guide_scale=1e-4)``. With ``init="original"``
    the PAC layers get the ``uniform`` filler (they are not ``nn.Conv2d`` in the original).
    Arguments and call as :class:`FCN8s`; H and W multiples of 32.
    """

    PAC_LAYERS = ("conv3_3", "conv4_3", "conv5_3")
    GUIDE_FROM = "relu2_2"
    GUIDE_SCALE = 1e-4

    def __init__(self, num_classes: int = 21, *, width: float = 1.0, init: str = "original",
                 rngs: nnx.Rngs | None = None, param_dtype=jnp.float32):
        from ppac_jax.nn.hot_swap import hot_swap

        rngs = nnx.Rngs(0) if rngs is None else rngs
        super().__init__(num_classes, width=width, init=init, rngs=rngs,
                         param_dtype=param_dtype, upsample="bilinear")
        hot_swap(self, self.PAC_LAYERS, guide_from=self.GUIDE_FROM,
                 guide_scale=self.GUIDE_SCALE, keep_weights=(init != "original"), rngs=rngs,
                 inplace=True)


def top_left_crop(x, out_crop: Sequence[int] | None):
    """The top-left ``out_crop = (h', w')`` block of ``x`` ``[B, H, W, C]`` (None: all of it)."""
    if out_crop is None:
        return x
    try:
        h, w = (int(v) for v in out_crop)
    except (TypeError, ValueError):
        raise ValueError(f"out_crop must be None or a pair (h, w), got {out_crop!r}") from None
    if not (0 < h <= x.shape[1] and 0 < w <= x.shape[2]):
        raise ValueError(f"out_crop {out_crop!r} must lie within the output size "
                         f"{tuple(x.shape[1:3])}")
    return x[:, :h, :w]


__all__ = ["ConvTranspose2d", "FCN8s", "FCN8sAltPad", "FCN8sPac", "top_left_crop"]
