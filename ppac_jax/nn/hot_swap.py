"""Hot-swapping: turn convolutions of any Flax NNX model into pixel-adaptive ones.

The PAC paper's recipe (Su et al. 2019, section 4.3, "PAC-FCN"): replace selected convolutions
of a trained network by :class:`~ppac_jax.nn.PacConv2d` with the same weights and a Gaussian
adapting kernel; with a constant guide the kernel is 1 and the network is unchanged, and
fine-tuning lets it learn to follow the guide. One line::

    model = nn.hot_swap(model, ["conv3_3", "conv4_3"], guide_from="relu2_2", guide_scale=1e-4)
    logits = model(x)                       # guide read from relu2_2's output on the way

or with a guide the caller supplies::

    model = nn.hot_swap(model, ["body.layers.2"])
    nn.set_guide(model, image)              # before every call (inside jit, after nnx.merge)
    logits = model(x)

How guides reach the swapped layers: the swapped layers of one model share one
:class:`GuideChannel`, a plain Python side channel that is static in the NNX graph (not a
variable: it is no part of the model's state, optimisers and state dicts never see it, and
writing to it is legal in any JAX trace, e.g. inside ``jax.vjp`` of a merged module).
``guide_from`` names a sub-module whose output is written to the channel whenever it runs (it
must run before the swapped layers, in the same call); :func:`set_guide` writes it from outside.
Each swapped layer bilinearly resizes the channel's guide to its input's resolution and
multiplies it by ``guide_scale``.
"""

from __future__ import annotations

from collections.abc import Iterable

import jax
import jax.extend.core
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ppac_jax.nn import fillers
from ppac_jax.nn.layers import Conv2d, PacConv2d, _numpy_rng
from ppac_jax.ops.resample import resize_bilinear


class GuideChannel:
    """The guide ``[B, H, W, D]`` that the hot-swapped layers of one model read.

    Static in the NNX graph (hashable; all channels compare equal, so equal models keep equal
    graph definitions); ``value`` is written during the forward pass (or by
    :func:`set_guide`) and only read in the same trace. A guide written inside a JAX
    transformation (``jax.jit``, ``jax.vjp``, ...) is a tracer that dies with it: reading the
    channel outside that transformation (after it has returned, or in another one) gives
    ``None`` and drops the tracer, so a swapped layer reports a missing guide instead of JAX's
    leaked-tracer error. Nested transformations inside the one that set it read it normally.
    """

    __slots__ = ("_value",)

    def __init__(self):
        self._value = None

    @property
    def value(self):
        """The guide, or ``None`` when none was set or it was set in a finished trace."""
        if _is_dead_tracer(self._value):
            self._value = None
        return self._value

    @value.setter
    def value(self, guide):
        self._value = guide

    def __hash__(self):
        return hash(GuideChannel)

    def __eq__(self, other):
        return isinstance(other, GuideChannel)

    def __deepcopy__(self, memo):
        return self

    def __repr__(self):
        return "GuideChannel()"


def _is_dead_tracer(value) -> bool:
    """Whether ``value`` is a tracer whose trace is neither the current JAX trace nor one it is
    nested in, i.e. the transformation that made it has returned (a leaked tracer)."""
    if not isinstance(value, jax.core.Tracer):
        return False
    own = getattr(value, "_trace", None)
    if own is None:                # a JAX without the attribute: JAX's own error applies
        return False
    with jax.extend.core.take_current_trace() as trace:
        while trace is not None:
            if trace is own:
                return False
            trace = getattr(trace, "parent_trace", None)
    return True


class HotSwappedPacConv2d(PacConv2d):
    """A :class:`~ppac_jax.nn.PacConv2d` that reads its guide from a shared :class:`GuideChannel`.

    Call: ``layer(x [B, H, W, Cin])`` uses the channel's guide (resized to ``(H, W)`` when its size
    differs, times ``guide_scale``); ``layer(x, guide)`` / ``layer(x, kernel=K)`` as
    ``PacConv2d`` (an explicit guide is used as given). Raises ``ValueError`` when no guide
    was set, or the guide was set inside a JAX transformation that has returned since.
    """

    def __init__(self, *args, guide_channel: GuideChannel, guide_scale: float = 1.0, **kwargs):
        super().__init__(*args, **kwargs)
        self.guide_channel = guide_channel
        self.guide_scale = float(guide_scale)

    def __call__(self, x, guide=None, *, kernel=None, mask=None):
        if guide is None and kernel is None:
            guide = self.guide_channel.value
            if getattr(guide, "ndim", None) != 4:
                raise ValueError("hot-swapped PAC layer has no guide: a guide must be set "
                                 "before the call, with nn.set_guide(model, guide) in the same "
                                 "trace as the call (a guide set inside jax.jit / jax.vjp does "
                                 "not outlive it), or hot_swap(..., guide_from=...)")
            if guide.shape[0] != x.shape[0]:
                raise ValueError(f"guide batch {guide.shape[0]} != input batch {x.shape[0]}")
            if guide.shape[1:3] != x.shape[1:3]:
                guide = resize_bilinear(guide, x.shape[1:3])
            if self.guide_scale != 1.0:
                guide = guide * self.guide_scale
        return super().__call__(x, guide, kernel=kernel, mask=mask)


_TAP_CLASSES: dict = {}


def _tap_class(cls):
    """A subclass of ``cls`` whose call also writes its output to ``self.guide_tap``.

    One class per base class (cached), so equal models have equal graph definitions.
    """
    if cls not in _TAP_CLASSES:
        def __call__(self, *args, **kwargs):
            out = cls.__call__(self, *args, **kwargs)
            self.guide_channel.value = out
            return out

        _TAP_CLASSES[cls] = type(f"GuideTap_{cls.__name__}", (cls,),
                                 {"__call__": __call__, "__module__": __name__,
                                  "__doc__": f"{cls.__name__} whose output is a PAC guide."})
    return _TAP_CLASSES[cls]


def _nodes(model):
    """``{dotted path: (parent, key, node)}`` of every sub-module of ``model``."""
    found = {}
    parents = {(): None}
    for path, node in nnx.iter_graph(model):
        parents[tuple(path)] = node
    for path, node in parents.items():
        if not path or node is None or isinstance(node, nnx.Variable):
            continue
        if isinstance(node, (nnx.Module, nnx.List)) or callable(node):
            found[".".join(str(p) for p in path)] = (parents.get(tuple(path[:-1])), path[-1],
                                                     node)
    return found


def _conv_geometry(name, conv):
    """``(in, out, kernel_size, stride, padding, dilation, weight HWIO, bias or None)``."""
    if isinstance(conv, PacConv2d):
        raise ValueError(f"layer {name!r} is already a PacConv2d")
    if isinstance(conv, Conv2d):
        return (conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride,
                conv.padding, conv.dilation, conv.weight,
                None if conv.bias is None else conv.bias)
    if isinstance(conv, nnx.Conv):
        kernel = conv.kernel
        kh, kw, cin, cout = kernel.shape if kernel.ndim == 4 else (0,) * 4
        if kernel.ndim != 4 or conv.feature_group_count != 1 or conv.mask is not None:
            raise ValueError(f"layer {name!r}: only 2-D, ungrouped, unmasked nnx.Conv can be "
                             f"hot-swapped")
        stride = _pair(conv.strides)
        dilation = _pair(conv.kernel_dilation)
        if _pair(conv.input_dilation) != (1, 1):
            raise ValueError(f"layer {name!r}: input_dilation is not supported")
        padding = conv.padding
        if isinstance(padding, str):
            if padding.upper() == "VALID":
                padding = (0, 0)
            elif padding.upper() == "SAME" and stride == (1, 1) \
                    and (kh - 1) * dilation[0] % 2 == 0 and (kw - 1) * dilation[1] % 2 == 0:
                padding = ((kh - 1) * dilation[0] // 2, (kw - 1) * dilation[1] // 2)
            else:
                raise ValueError(f"layer {name!r}: padding {conv.padding!r} has no symmetric "
                                 f"equivalent; give explicit padding")
        else:
            padding = _symmetric_padding(name, padding)
        return cin, cout, (kh, kw), stride, padding, dilation, kernel, conv.bias
    raise ValueError(f"layer {name!r} is a {type(conv).__name__}, not a convolution "
                     f"(nn.Conv2d or nnx.Conv)")


def _pair(v):
    if v is None:
        return (1, 1)
    if isinstance(v, int):
        return (v, v)
    v = tuple(int(a) for a in v)
    return v * 2 if len(v) == 1 else v


def _symmetric_padding(name, padding):
    if isinstance(padding, int):
        return (padding, padding)
    pads = list(padding)
    if all(isinstance(p, int) for p in pads):
        return _pair(pads)
    out = []
    for lo_hi in pads:
        lo, hi = lo_hi
        if lo != hi:
            raise ValueError(f"layer {name!r}: asymmetric padding {padding!r} is not supported")
        out.append(int(lo))
    return tuple(out)


def hot_swap(model, layer_names: Iterable[str], *, guide_from: str | None = None,
             guide_scale: float = 1.0, kernel_type: str = "gaussian",
             normalize_kernel: bool = False, keep_weights: bool = True,
             rngs: nnx.Rngs | None = None, impl: str = "auto", inplace: bool = False):
    """Replace convolutions of ``model`` by pixel-adaptive ones that keep their weights.

    Args:
      model: any Flax NNX module.
      layer_names: dotted paths of its convolutions (``nn.Conv2d`` or 2-D ``nnx.Conv``), as
        state-dict names without the variable: ``"conv3_3"``, ``"body.layers.2"``,
        ``"blocks.0.conv"``. An empty selection returns the model unchanged.
      guide_from: dotted path of a sub-module whose output is the guide (e.g. ``"relu2_2"``);
        it must run before the swapped layers. ``None``: the caller sets the guide with
        :func:`set_guide` before each call.
      guide_scale: factor applied to the guide after resizing (FCN8sPac: ``1e-4``).
      kernel_type, normalize_kernel, impl: of the new :class:`~ppac_jax.nn.PacConv2d` layers.
      keep_weights: copy weight and bias (the paper's recipe); ``False`` gives the ``uniform``
        filler instead (drawn from ``rngs``).
      rngs: for ``keep_weights=False``.
      inplace: modify ``model`` instead of a copy (``nnx.clone``).

    Returns:
      The model (a copy unless ``inplace``) whose selected layers are
      :class:`HotSwappedPacConv2d` with the same attribute names, so state-dict names
      (``conv3_3.weight``) and parameter values are kept. With a constant guide and the
      Gaussian kernel the adapting kernel is 1 and the model computes what it computed before.

    Raises:
      ValueError: a name that is not a sub-module of ``model`` (the message names it), a
        layer that is not a supported convolution, an unknown ``guide_from``, or a name given
        twice.
    """
    if isinstance(layer_names, str):
        layer_names = [layer_names]
    names = list(layer_names)
    if len(set(names)) != len(names):
        raise ValueError(f"layer_names has duplicates: {names}")
    if not names and guide_from is None:
        return model if inplace else nnx.clone(model)
    if not inplace:
        model = nnx.clone(model)
    nodes = _nodes(model)
    for name in names:
        if name not in nodes:
            raise ValueError(f"hot_swap: model {type(model).__name__} has no layer {name!r}")
    if guide_from is not None and guide_from not in nodes:
        raise ValueError(f"hot_swap: guide_from={guide_from!r} is not a layer of "
                         f"{type(model).__name__}")
    channel = _find_channel(model) or GuideChannel()
    rng = None
    for name in names:
        parent, key, conv = nodes[name]
        cin, cout, k, stride, padding, dilation, weight, bias = _conv_geometry(name, conv)
        dtype = weight[...].dtype
        pac = HotSwappedPacConv2d(cin, cout, k, stride=stride, padding=padding,
                                  dilation=dilation, bias=bias is not None,
                                  kernel_type=kernel_type, normalize_kernel=normalize_kernel,
                                  rngs=nnx.Rngs(0), param_dtype=dtype, impl=impl,
                                  guide_channel=channel, guide_scale=guide_scale)
        if keep_weights:
            pac.weight.set_value(weight[...])
            if bias is not None:
                pac.bias.set_value(bias[...])
        else:
            rng = _numpy_rng(rngs) if rng is None else rng
            fan_in = cin * k[0] * k[1]
            pac.weight.set_value(jnp.asarray(
                fillers.uniform_weight(rng, weight.shape, fan_in), dtype))
            if bias is not None:
                pac.bias.set_value(jnp.asarray(
                    fillers.uniform_weight(rng, (cout,), fan_in), dtype))
        _replace(parent, key, pac)
    if guide_from is not None:
        source = nodes[guide_from][2]
        if not isinstance(source, nnx.Module):
            raise ValueError(f"hot_swap: guide_from={guide_from!r} is not a module")
        if names and not any(isinstance(source, cls) for cls in _TAP_CLASSES.values()):
            source.__class__ = _tap_class(type(source))
            source.guide_channel = channel
    return model


def _replace(parent, key, new):
    if isinstance(key, (int, np.integer)) or isinstance(parent, (list, nnx.List)):
        parent[int(key)] = new
    else:
        setattr(parent, key, new)


def _channels(model) -> dict:
    found = {}
    for _, node in nnx.iter_graph(model):
        channel = getattr(node, "guide_channel", None)
        if isinstance(node, nnx.Module) and isinstance(channel, GuideChannel):
            found[id(channel)] = channel
    return found


def _find_channel(model) -> GuideChannel | None:
    return next(iter(_channels(model).values()), None)


def set_guide(model, guide) -> None:
    """Give the hot-swapped layers of ``model`` the guide ``[B, H, W, D]`` for the next call.

    Each layer resizes it (bilinear) to its own input resolution and applies its
    ``guide_scale``. Works inside ``jax.jit`` on a merged module.

    Raises:
      ValueError: ``model`` has no hot-swapped layer, or ``guide`` is not 4-D.
    """
    channels = _channels(model)
    if not channels:
        raise ValueError("set_guide: the model has no hot-swapped PAC layer")
    if getattr(guide, "ndim", None) != 4:
        raise ValueError(f"guide must be [B, H, W, D], got shape {getattr(guide, 'shape', None)}")
    for channel in channels.values():
        channel.value = guide


__all__ = ["GuideChannel", "HotSwappedPacConv2d", "hot_swap", "set_guide"]
