"""Hot-swapping: turn convolutions of any Flax NNX model into pixel-adaptive ones.

The PAC paper's recipe (Su et al. 2019, section 4.3, "PAC-FCN"): replace selected convolutions
of a trained network by :class:`~ppac_jax.nn.PacConv2d` with the same weights and a Gaussian
adapting kernel; with a constant guide the kernel is 1 and the network is unchanged, and
fine-tuning lets it learn to follow the guide. One line::

    model = nn.hot_swap(model, ["conv3_3", "conv4_3"], guide_from="relu2_2", guide_scale=1e-4)
    logits = model(x)                       # guide read from relu2_2's output on the way

or with a guide the caller supplies::

    model = nn.hot_swap(model, ["body.layers.2"])
    nn.set_guide(model, image)              # before the call
    logits = model(x)

Where the guide lives: the swapped layers of one model (and its ``guide_from`` layer) share one
:class:`Guide` variable. A guide set with :func:`set_guide` outside any JAX transformation is
its value: model state, neither ``nnx.Param`` nor a buffer, so ``nnx.jit`` and ``jax.jit`` over
``nnx.split`` / ``nnx.merge`` take it as an input (a new guide is used without retracing; a new
shape retraces), optimisers never see it and ``nnx.split(model, nnx.Param, ...)`` puts it in the
rest (``ppac_jax.train.Trainer`` keeps the rest constant and does not checkpoint it; a state
saved whole keeps the guide's shape, so set guides after restoring). Its value is ``None``
until set, which has no leaves. Like any state, a function that closes over the model
(``jax.jit(lambda x: model(x))``) bakes the guide in. A guide set inside a transformation
(``set_guide`` inside ``nnx.jit``, ``jax.jit``, ``jax.vjp``, ``jax.vmap``, ``lax.scan``, ...) and
the output of the ``guide_from`` layer are not state: they are held beside the variable for the
trace that wrote them, read while it (or a trace nested in it) runs, and dropped after it has
returned; they change neither the model's state nor its structure. ``guide_from`` names a
sub-module whose output is the guide whenever it runs; it must run before the swapped layers, in
the same call. Each swapped layer bilinearly resizes the guide to its input's resolution and
multiplies it by ``guide_scale``.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Iterable

import jax
import jax.extend.core
import jax.numpy as jnp
import numpy as np
from flax import errors as flax_errors
from flax import nnx

from ppac_jax.nn import fillers
from ppac_jax.nn.layers import Conv2d, PacConv2d, _numpy_rng
from ppac_jax.ops.resample import resize_bilinear


class Guide(nnx.Variable):
    """The guide ``[B, H, W, D]`` shared by the hot-swapped layers of one model.

    A variable that is neither ``nnx.Param`` nor :class:`~ppac_jax.nn.Buffer` /
    :class:`~ppac_jax.nn.BatchStat`: optimisers skip it and ``nnx.split(model, nnx.Param,
    BatchStat, ...)`` puts it in the rest (``ppac_jax.train.Trainer`` keeps the rest constant and
    does not checkpoint it). Its value is the guide that :func:`set_guide` assigned outside any
    JAX transformation, or ``None`` (no leaves), so jit sees it as an input. A guide set inside
    a transformation, and the output of a ``guide_from`` layer, are held beside the value for the
    trace that wrote them only (:meth:`current` reads them while that trace or one nested in it
    runs); they are no part of the state and every copy (``nnx.clone``, ``nnx.merge``) starts
    without them.
    """

    __slots__ = ("_scoped",)

    def set_scoped(self, guide) -> None:
        """Hold ``guide`` for the current JAX trace only (not state)."""
        with jax.extend.core.take_current_trace() as trace:
            object.__setattr__(self, "_scoped", (trace, guide))

    def clear_scoped(self) -> None:
        object.__setattr__(self, "_scoped", None)

    def scoped(self):
        """The guide held for a trace that is still running (the current one or one it is
        nested in), else ``None``; a guide of a finished trace is dropped."""
        try:
            entry = object.__getattribute__(self, "_scoped")
        except AttributeError:
            return None
        if entry is None:
            return None
        if _is_live(entry[0]):
            return entry[1]
        self.clear_scoped()
        return None

    def current(self):
        """The guide a swapped layer uses now: :meth:`scoped`, else the value (or ``None``)."""
        scoped = self.scoped()
        return self.get_value() if scoped is None else scoped


def _is_live(trace) -> bool:
    """Whether ``trace`` is the current JAX trace or one the current trace is nested in."""
    with jax.extend.core.take_current_trace() as current:
        while current is not None:
            if current is trace:
                return True
            current = getattr(current, "parent_trace", None)
    return False


def _outside_transformations() -> bool:
    """Whether no JAX transformation is being traced (the current trace is the top one)."""
    with jax.extend.core.take_current_trace() as trace:
        return getattr(trace, "parent_trace", None) is None


class HotSwappedPacConv2d(PacConv2d):
    """A :class:`~ppac_jax.nn.PacConv2d` whose guide is its model's shared :class:`Guide`.

    Call: ``layer(x [B, H, W, Cin])`` uses the guide (:meth:`Guide.current`; resized bilinearly
    to ``(H, W)`` when its size differs, times ``guide_scale``); ``layer(x, guide)`` /
    ``layer(x, kernel=K)`` as ``PacConv2d`` (an explicit guide is used as given). Raises
    ``ValueError`` when there is no guide (none set, or set inside a JAX transformation that has
    returned since; with ``guide_from``: that layer has not run before this one in this call) or
    its batch differs from ``x``'s.
    """

    def __init__(self, *args, guide_variable: Guide, guide_scale: float = 1.0,
                 guide_from: str | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.hot_swap_guide = guide_variable
        self.guide_scale = float(guide_scale)
        self.guide_from = guide_from

    def __call__(self, x, guide=None, *, kernel=None, mask=None):
        if guide is None and kernel is None:
            guide = self.hot_swap_guide.current()
            if getattr(guide, "ndim", None) != 4:
                if self.guide_from is not None:
                    raise ValueError(
                        f"hot-swapped PAC layer has no guide: its guide layer "
                        f"guide_from={self.guide_from!r} has not run before it in this call "
                        f"(it runs after the swapped layer, or not at all); guide_from must "
                        f"name a layer that runs before the swapped layers")
                raise ValueError("hot-swapped PAC layer has no guide: a guide must be set "
                                 "before the call with nn.set_guide(model, guide) (a guide set "
                                 "inside jax.jit / jax.vjp / nnx.jit lasts for that trace only), "
                                 "or use hot_swap(..., guide_from=...)")
            if guide.shape[0] != x.shape[0]:
                raise ValueError(f"guide batch {guide.shape[0]} != input batch {x.shape[0]}")
            if guide.shape[1:3] != x.shape[1:3]:
                guide = resize_bilinear(guide, x.shape[1:3])
            if self.guide_scale != 1.0:
                guide = guide * self.guide_scale
        return super().__call__(x, guide, kernel=kernel, mask=mask)


_TAP_CLASSES: dict = {}


def _tap_class(cls):
    """A subclass of ``cls`` whose call also holds its output as the guide of
    ``self.hot_swap_guide`` for the current trace (:meth:`Guide.set_scoped`, not state).

    One class per base class (cached), so equal models have equal graph definitions.
    """
    if cls not in _TAP_CLASSES:
        def __call__(self, *args, **kwargs):
            out = cls.__call__(self, *args, **kwargs)
            self.hot_swap_guide.set_scoped(out)
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
        Children of an ``nnx.Sequential`` are ``"<name>.layers.<i>"``; ``nnx.List`` items
        ``"<name>.<i>"``.
      guide_from: dotted path of a sub-module whose output is the guide (e.g. ``"relu2_2"``);
        it must run before the swapped layers, in the same call. ``None``: the caller sets the
        guide with :func:`set_guide`.
      guide_scale: a finite number, the factor applied to the guide after resizing (FCN8sPac:
        ``1e-4``).
      kernel_type, normalize_kernel, impl: of the new :class:`~ppac_jax.nn.PacConv2d` layers.
      keep_weights: copy weight and bias (the paper's recipe); ``False`` gives the ``uniform``
        filler instead (drawn from ``rngs``).
      rngs: the generator for ``keep_weights=False``; ``None`` uses the fixed default
        ``nnx.Rngs(0)``, so every call without ``rngs`` draws the same weights. Unused when
        ``keep_weights`` is true.
      inplace: modify ``model`` instead of a copy (``nnx.clone``).

    Returns:
      The model (a copy unless ``inplace``) whose selected layers are
      :class:`HotSwappedPacConv2d` with the same attribute names, so state-dict names
      (``conv3_3.weight``) and parameter values are kept; they share one :class:`Guide`
      variable (reused when ``model`` already has hot-swapped layers). With a constant guide and the
      Gaussian kernel the adapting kernel is 1 and the model computes what it computed before.

    Raises:
      ValueError: a name that is not a sub-module of ``model`` (the message names it and
        convolutions with close names), a layer that is not a supported convolution, an unknown
        ``guide_from``, a name given twice, or a ``guide_scale`` that is not a finite number.
    """
    if isinstance(layer_names, str):
        layer_names = [layer_names]
    names = list(layer_names)
    if len(set(names)) != len(names):
        raise ValueError(f"layer_names has duplicates: {names}")
    try:
        guide_scale = float(guide_scale)
    except (TypeError, ValueError):
        raise ValueError(f"guide_scale must be a finite number, got {guide_scale!r}") from None
    if not math.isfinite(guide_scale):
        raise ValueError(f"guide_scale must be a finite number, got {guide_scale!r}")
    if not names and guide_from is None:
        return model if inplace else nnx.clone(model)
    if not inplace:
        model = nnx.clone(model)
    nodes = _nodes(model)
    for name in names:
        if name not in nodes:
            convs = [n for n, (_, _, node) in nodes.items()
                     if isinstance(node, (Conv2d, nnx.Conv)) and not isinstance(node, PacConv2d)]
            close = difflib.get_close_matches(name, convs, n=3, cutoff=0.5)
            hint = f" (close: {', '.join(map(repr, close))})" if close else ""
            raise ValueError(f"hot_swap: model {type(model).__name__} has no layer "
                             f"{name!r}{hint}")
    if guide_from is not None and guide_from not in nodes:
        raise ValueError(f"hot_swap: guide_from={guide_from!r} is not a layer of "
                         f"{type(model).__name__}")
    guide_variable = _find_guide(model) or Guide(None)
    rng = None
    for name in names:
        parent, key, conv = nodes[name]
        cin, cout, k, stride, padding, dilation, weight, bias = _conv_geometry(name, conv)
        dtype = weight[...].dtype
        pac = HotSwappedPacConv2d(cin, cout, k, stride=stride, padding=padding,
                                  dilation=dilation, bias=bias is not None,
                                  kernel_type=kernel_type, normalize_kernel=normalize_kernel,
                                  rngs=nnx.Rngs(0), param_dtype=dtype, impl=impl,
                                  guide_variable=guide_variable, guide_scale=guide_scale,
                                  guide_from=guide_from)
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
            source.hot_swap_guide = guide_variable
    return model


def _replace(parent, key, new):
    if isinstance(key, (int, np.integer)) or isinstance(parent, (list, nnx.List)):
        parent[int(key)] = new
    else:
        setattr(parent, key, new)


def _guides(model) -> tuple[dict, list]:
    """``({id: Guide}, [guide_from layers])`` of the hot-swapped layers of ``model``."""
    found, taps = {}, []
    for _, node in nnx.iter_graph(model):
        guide = getattr(node, "hot_swap_guide", None) if isinstance(node, nnx.Module) else None
        if isinstance(guide, Guide):
            if isinstance(node, HotSwappedPacConv2d):
                found[id(guide)] = guide
            else:
                taps.append(node)
    return found, taps


def _find_guide(model) -> Guide | None:
    return next(iter(_guides(model)[0].values()), None)


def set_guide(model, guide) -> None:
    """Give the hot-swapped layers of ``model`` the guide ``[B, H, W, D]``.

    Each layer resizes it (bilinear) to its own input resolution and applies its
    ``guide_scale``. Outside any JAX transformation the guide becomes the value of the model's
    :class:`Guide` variable: it stays until replaced, copies (``nnx.clone``) keep their own,
    and ``nnx.jit`` / ``jax.jit`` over ``nnx.split`` + ``nnx.merge`` take it as an input, so
    each call uses the guide set last. Inside a transformation (e.g. in the function that
    ``nnx.jit``, ``jax.jit``, ``jax.vjp``, ``jax.vmap`` or ``lax.scan`` traces) it lasts for
    that trace only and changes neither the model's state nor its structure.

    Raises:
      ValueError: ``model`` has no hot-swapped layer, its guide comes from a ``guide_from``
        layer, or ``guide`` is not 4-D.
    """
    guides, taps = _guides(model)
    if not guides:
        raise ValueError("set_guide: the model has no hot-swapped PAC layer")
    if taps:
        raise ValueError(f"set_guide: the model's guide is the output of its "
                         f"{type(taps[0]).__name__} layer (hot_swap(..., guide_from=...)); "
                         f"a guide set here would be replaced by it")
    if getattr(guide, "ndim", None) != 4:
        raise ValueError(f"guide must be [B, H, W, D], got shape {getattr(guide, 'shape', None)}")
    for variable in guides.values():
        if _outside_transformations() and not isinstance(guide, jax.core.Tracer):
            try:
                variable.set_value(jnp.asarray(guide))
                variable.clear_scoped()
                continue
            except flax_errors.TraceContextError:
                pass
        variable.set_scoped(guide)


__all__ = ["Guide", "HotSwappedPacConv2d", "hot_swap", "set_guide"]
