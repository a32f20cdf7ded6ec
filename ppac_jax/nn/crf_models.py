"""Segmentation network + PAC-CRF head (NVlabs/pacnet ``task_semanticSegmentation/models.py``).

* :class:`ModelWithCrf`: ``backbone`` logits refined by a :class:`~ppac_jax.nn.PacCRF` /
  :class:`~ppac_jax.nn.PacCRFLoose` whose edge features are the image divided by learnable
  per-kernel scales (``feat_scales.<i>``);
* :class:`ModelWithConvCrf`: the ConvCRF-like head (two fixed 11x11 ``crf_pool`` kernels on
  YXRGB and position features, blur 4, ``2d`` compatibilities);
* :func:`create_model`: pacnet's model-name grammar (``fcn8s_crfi5p4d5641p4d5161``,
  ``fcn8sfrozen_...``, loose ``crfi5l...``, ``*_convcrf``);
* :func:`freeze`: turn every ``nnx.Param`` of a module into a :class:`~ppac_jax.nn.Buffer`.

Semantics: SPEC_wave2.md sections 2.4-2.6. Arrays NHWC.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import NamedTuple

import jax.numpy as jnp
import numpy as np
from flax import nnx

from ppac_jax import ops
from ppac_jax.nn import fillers
from ppac_jax.nn.crf import PacCRF, PacCRFLoose
from ppac_jax.nn.layers import Buffer, _numpy_rng
from ppac_jax.nn.segment import FCN8s, FCN8sAltPad, FCN8sPac, top_left_crop

BACKBONES = {"fcn8s": FCN8s, "fcn8saltpad": FCN8sAltPad, "fcn8spac": FCN8sPac}
PERTURBATION = 0.0005
FEAT_SCALE_INIT = 30.0


class PairwiseSpec(NamedTuple):
    """One pairwise kernel of the grammar: ``code_k_dilation_blur`` (e.g. ``4d_5_16_1``)."""

    code: str
    kernel_size: int
    dilation: int
    blur: int

    @property
    def compat_type(self) -> str:
        return "potts" if self.code.startswith("0d") else self.code[:2]

    @property
    def spatial_filter(self) -> bool:
        return self.code.endswith("s")

    def __str__(self):
        return f"{self.code}_{self.kernel_size}_{self.dilation}_{self.blur}"


_CODES = {"4d": "4d", "2d": "2d", "0d": "potts", "na": "na"}


def parse_pairwise(spec) -> PairwiseSpec:
    """``"4d_5_16_1"`` (or a :class:`PairwiseSpec`) -> :class:`PairwiseSpec`.

    The code is ``4d``, ``2d``, ``0d`` (Potts) or ``na``, optionally followed by ``s`` (a
    learnable spatial filter instead of the fixed ``crf_pool`` one).

    Raises:
      ValueError: malformed spec, or a code the original treats as an anti-Potts term
        (e.g. ``9d``): ppac-jax refuses those.
    """
    if isinstance(spec, PairwiseSpec):
        return spec
    parts = str(spec).split("_")
    if len(parts) != 4 or not all(p.isdigit() for p in parts[1:]):
        raise ValueError(f"pairwise kernel {spec!r} must be 'code_kernel_dilation_blur', e.g. "
                         f"'4d_5_16_1'")
    code = parts[0]
    if code[:2] not in _CODES or code[2:] not in ("", "s"):
        raise ValueError(f"pairwise kernel {spec!r}: unknown compatibility code {code!r} "
                         f"(expected 4d, 2d, 0d or na, optionally + 's'; the original runs other "
                         f"codes as a fixed anti-Potts term, which ppac-jax does not support)")
    k, d, b = (int(p) for p in parts[1:])
    ops.make_term(k, dilation=d, blur=b, compat_type=_CODES[code[:2]],
                  spatial_filter=code.endswith("s"))   # validates the numbers
    return PairwiseSpec(code, k, d, b)


def freeze(module: nnx.Module) -> nnx.Module:
    """Turn every ``nnx.Param`` of ``module`` into a :class:`~ppac_jax.nn.Buffer` (in place).

    Values and metadata (``torch_layout``) are kept, so state dicts still load and export, but
    ``nnx.grad`` / optimisers (``wrt=nnx.Param``) no longer see them: the original's
    ``requires_grad = False`` for a ``*frozen`` backbone. Returns ``module``.
    """
    replaced = {}
    for path, node in list(nnx.iter_graph(module)):
        if not path or not isinstance(node, nnx.Param):
            continue
        parent = module
        for p in path[:-1]:
            parent = parent[p] if isinstance(p, int) else getattr(parent, p)
        if id(node) not in replaced:
            replaced[id(node)] = Buffer(node.get_value(), **_metadata(node))
        key = path[-1]
        if isinstance(key, int):
            parent[key] = replaced[id(node)]
        else:
            setattr(parent, key, replaced[id(node)])
    return module


def _metadata(var: nnx.Variable) -> dict:
    meta = dict(var.get_metadata())
    return {k: v for k, v in meta.items() if not k.startswith("_") and k not in
            ("value", "hijax", "ref", "mutable", "eager_sharding")}


def _check_backbone(backbone):
    if not isinstance(backbone, nnx.Module) or not callable(backbone):
        raise ValueError(f"backbone must be an nnx.Module with __call__(x, out_crop=None), got "
                         f"{type(backbone).__name__}")
    n = getattr(backbone, "num_classes", None)
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"backbone must have a positive int attribute num_classes, got {n!r}")
    return int(n)


def _perturb(crf: PacCRF, rng: np.random.Generator):
    """pacnet's ``perturbed_init``: ``crf`` filler (4d / spatial messengers) or ``1 - I``
    (2d compatibilities) plus U(-0.0005, 0.0005) noise per entry."""
    c = crf.channels
    for i, term in enumerate(crf.terms):
        messenger = crf.messengers[i].weight
        if term.compat_type != "na" and isinstance(messenger, nnx.Param):
            base = fillers.crf_weight(c, c, term.kernel_size, term.shared_filters)
            noise = rng.uniform(-PERTURBATION, PERTURBATION, base.shape)
            messenger.set_value(jnp.asarray(base + noise, messenger.get_value().dtype))
        if crf.compat[i] is not None:
            w = crf.compat[i].weight
            base = (1 - np.eye(c))[None, None]
            w.set_value(jnp.asarray(base + rng.uniform(-PERTURBATION, PERTURBATION, base.shape),
                                    w.get_value().dtype))


class ModelWithCrf(nnx.Module):
    """A segmentation backbone followed by a PAC-CRF (pacnet ``models.ModelWithCrf``).

    Args:
      backbone: any NNX module with ``num_classes`` and ``__call__(x, out_crop=None)`` returning
        ``[B, h, w, num_classes]`` logits (e.g. :class:`~ppac_jax.nn.FCN8s`).
      num_steps: mean-field steps.
      pairwise: pairwise kernels as ``"code_kernel_dilation_blur"`` strings (``4d_5_16_1``;
        see :func:`parse_pairwise`), one edge kernel each.
      loose: untied steps (:class:`~ppac_jax.nn.PacCRFLoose`) instead of
        :class:`~ppac_jax.nn.PacCRF`.
      use_yx: edge features ``[y, x, c0, c1, c2]`` (position + image) instead of the image.
      shared_scales: one ``feat_scales.0`` for every kernel instead of one per kernel.
      adaptive_init: with ``use_yx``, initial position scales ``((k - 1) d + 1) / 4`` instead
        of 100.
      rngs: seeds the CRF's perturbed initialisation (default ``nnx.Rngs(0)``).
      param_dtype: dtype of the CRF parameters and feature scales.

    CRF: ``final_output="log_Q"``, perturbed initialisation (``crf`` filler / ``1 - I`` plus
    U(-5e-4, 5e-4)), learnable ``unary_weight`` (1.0), every pairwise weight 1.0 (Potts: -1,
    learnable). Feature scales: ``feat_scales.<i>`` = ``[30, 30, 30]`` (``nnx.Param``).

    Call: ``model(x [B, H, W, 3], out_crop=None)`` -> log_Q ``[B, h, w, n]`` (unnormalised
    log-marginals): ``unary = backbone(x, out_crop)``, ``x`` is cropped to the same top-left
    block, edge features ``x * (1 / feat_scales[i])`` per channel.

    Raises:
      ValueError: a bad backbone, pairwise spec or input shape.
    """

    def __init__(self, backbone, num_steps: int = 5, pairwise: Sequence = ("4d_5_16_1",),
                 loose: bool = False, use_yx: bool = False, shared_scales: bool = True,
                 adaptive_init: bool = True, *, rngs: nnx.Rngs | None = None,
                 param_dtype=jnp.float32):
        n = _check_backbone(backbone)
        if isinstance(pairwise, (str, PairwiseSpec)):
            pairwise = (pairwise,)
        specs = tuple(parse_pairwise(p) for p in pairwise)
        if not specs:
            raise ValueError("pairwise must name at least one pairwise kernel")
        self.backbone = backbone
        self.num_classes = n
        self.pairwise = tuple(str(s) for s in specs)
        self.loose = bool(loose)
        self.use_yx = bool(use_yx)
        self.shared_scales = bool(shared_scales)
        rngs = nnx.Rngs(0) if rngs is None else rngs
        kernels = [dict(kernel_size=s.kernel_size, dilation=s.dilation, blur=s.blur,
                        compat_type=s.compat_type, spatial_filter=s.spatial_filter,
                        pairwise_weight=1.0) for s in specs]
        cls = PacCRFLoose if loose else PacCRF
        self.crf = cls(n, num_steps, final_output="log_Q", perturbed_init=True,
                       fixed_weighting=False, unary_weight=1.0, pairwise_kernels=kernels,
                       rngs=rngs, param_dtype=param_dtype)
        rng = _numpy_rng(rngs)
        for step in (self.crf.steps if loose else [self.crf]):
            _perturb(step, rng)
        scales = []
        for s in specs[:1] if shared_scales else specs:
            init = [FEAT_SCALE_INIT] * 3
            if use_yx:
                p = ((s.kernel_size - 1) * s.dilation + 1) / 4.0 if adaptive_init else 100.0
                init = [p, p] + init
            scales.append(nnx.Param(jnp.asarray(np.array(init, np.float32), param_dtype),
                                    torch_layout="same"))
        self.feat_scales = nnx.List(scales)

    @property
    def num_steps(self) -> int:
        return self.crf.num_steps

    def edge_features(self, x) -> list:
        """Per-kernel edge features ``[B, H, W, 3 or 5]`` of the (cropped) image ``x``."""
        feats = []
        for i in range(len(self.pairwise)):
            scales = self.feat_scales[0 if self.shared_scales else i][...]
            if self.use_yx:
                feats.append(ops.yxrgb_features(x, scales=scales))
            else:
                feats.append(x * (1 / scales).astype(jnp.result_type(x, scales)))
        return feats

    def __call__(self, x, out_crop: Sequence[int] | None = None):
        if getattr(x, "ndim", None) != 4 or x.shape[-1] != 3:
            raise ValueError(f"x must be [B, H, W, 3], got shape {getattr(x, 'shape', None)}")
        unary = self.backbone(x, out_crop)
        x = top_left_crop(x, out_crop)
        if unary.shape[1:3] != x.shape[1:3]:
            raise ValueError(f"backbone output {unary.shape[1:3]} does not match the "
                             f"(cropped) image {x.shape[1:3]}")
        return self.crf(unary, self.edge_features(x))


class ModelWithConvCrf(nnx.Module):
    """A backbone followed by the ConvCRF-like PAC-CRF (pacnet ``models.ModelWithConvCrf``).

    ``PacCRF(n, 5, perturbed_init=True, unary_weight=0.8)`` with two kernels, both 11x11,
    dilation 1, blur 4, compatibility ``compat``, fixed ``crf_pool`` messengers (buffers) and
    constant pairwise weights 2.0 and 0.6. Edge features of the cropped image ``x``:
    ``[y/80, x/80, c/13]`` (:func:`ppac_jax.ops.yxrgb_features`) and ``[y/3, x/3]`` (float32,
    as the original, also in a float64 model).

    Args:
      backbone: as :class:`ModelWithCrf`.
      compat: ``"2d"`` (create_model's choice), ``"4d"``, ``"potts"`` or ``"na"``.
      rngs, param_dtype: as :class:`ModelWithCrf`.

    Call: ``model(x [B, H, W, 3], out_crop=None)`` -> log_Q ``[B, h, w, n]``.
    """

    WEIGHTS = (2.0, 0.6)

    def __init__(self, backbone, compat: str = "2d", *, rngs: nnx.Rngs | None = None,
                 param_dtype=jnp.float32):
        n = _check_backbone(backbone)
        compat = {"0d": "potts"}.get(compat, compat)
        if compat not in ops.crf.COMPAT_TYPES:
            raise ValueError(f"compat must be one of {ops.crf.COMPAT_TYPES}, got {compat!r}")
        self.backbone = backbone
        self.num_classes = n
        self.compat_type = compat
        rngs = nnx.Rngs(0) if rngs is None else rngs
        kernels = [dict(kernel_size=11, dilation=1, blur=4, compat_type=compat,
                        spatial_filter=False, pairwise_weight=w) for w in self.WEIGHTS]
        self.crf = PacCRF(n, 5, final_output="log_Q", perturbed_init=True,
                          fixed_weighting=False, unary_weight=0.8, pairwise_kernels=kernels,
                          rngs=rngs, param_dtype=param_dtype)
        _perturb(self.crf, _numpy_rng(rngs))

    def edge_features(self, x) -> list:
        b, h, w = x.shape[:3]
        return [ops.yxrgb_features(x, yx_scale=80.0, rgb_scale=13.0),
                ops.position_features((h, w), scales=3.0, batch=b)]

    def __call__(self, x, out_crop: Sequence[int] | None = None):
        if getattr(x, "ndim", None) != 4 or x.shape[-1] != 3:
            raise ValueError(f"x must be [B, H, W, 3], got shape {getattr(x, 'shape', None)}")
        unary = self.backbone(x, out_crop)
        x = top_left_crop(x, out_crop)
        return self.crf(unary, self.edge_features(x))


# ---------------------------------------------------------------------------------------------
# the model-name grammar

class ModelName(NamedTuple):
    """A parsed model name (see :func:`parse_model_name`)."""

    backbone: str
    frozen: bool
    head: str | None           # None, "crf" or "convcrf"
    num_steps: int = 0
    loose: bool = False
    pairwise: tuple = ()


def parse_model_name(name: str) -> ModelName:
    """Parse pacnet's model-name grammar (SPEC_wave2 2.4) without building anything.

    ``backbone[frozen][_crf]``: backbone ``fcn8s`` | ``fcn8saltpad`` | ``fcn8spac``; crf part
    ``convcrf`` | ``convcrfv1`` | ``crf[v7][i<steps>[l]](p<code><k><dilation><blur>)*`` (one-digit
    kernel size and blur, default edge ``p4d5161``, default 5 tied steps).

    Raises:
      ValueError: one line naming the malformed part.
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"model name must be a non-empty string, got {name!r}")
    parts = name.split("_")
    if len(parts) > 2:
        raise ValueError(f"model name {name!r}: expected 'backbone' or 'backbone_crf' (one '_')")
    backbone, frozen = parts[0], False
    if len(parts) == 2 and backbone.endswith("frozen"):
        backbone, frozen = backbone[: -len("frozen")], True
    if backbone not in BACKBONES:
        raise ValueError(f"model name {name!r}: unknown backbone {backbone!r} (expected one of "
                         f"{sorted(BACKBONES)}{', optionally + frozen' if len(parts) == 2 else ''})")
    if len(parts) == 1:
        return ModelName(backbone, False, None)
    crf = parts[1]
    if crf in ("convcrf", "convcrfv1"):
        return ModelName(backbone, frozen, "convcrf", 5, False, ("2d_11_1_4", "2d_11_1_4"))
    if "p" not in crf:
        crf += "p4d5161"
    kind, edges = crf[:crf.index("p")], crf[crf.index("p"):]
    steps, loose = 5, False
    if "i" in kind:
        i = kind.index("i")
        loose = kind.endswith("l")
        count = kind[i + 1: len(kind) - 1 if loose else len(kind)]
        if not count.isdigit():
            raise ValueError(f"model name {name!r}: the step count after 'i' in {kind!r} must be "
                             f"an integer")
        steps, kind = int(count), kind[:i]
    if kind not in ("crf", "crfv7"):
        raise ValueError(f"model name {name!r}: CRF type {kind!r} must be 'crf' or 'crfv7'")
    if loose and steps < 1:
        raise ValueError(f"model name {name!r}: a loose CRF needs at least one step")
    specs = []
    for s in edges.split("p")[1:]:
        code = s[:3] if len(s) > 2 and s[2] == "s" else s[:2]
        rest = s[len(code):]
        if len(rest) < 3 or not rest.isdigit():
            raise ValueError(f"model name {name!r}: pairwise part 'p{s}' must be "
                             f"'p<code><k><dilation><blur>' (e.g. p4d5161)")
        specs.append(str(parse_pairwise(f"{code}_{rest[0]}_{rest[1:-1]}_{rest[-1]}")))
    return ModelName(backbone, frozen, "crf", steps, loose, tuple(specs))


def create_model(name: str, num_classes: int, *, backbone=None, rngs=None,
                 param_dtype=jnp.float32, **backbone_kwargs):
    """Build a model from pacnet's model-name grammar (``models.create_model``).

    Args:
      name: e.g. ``"fcn8s"``, ``"fcn8spac"``, ``"fcn8s_crfi5p4d5641p4d5161"``,
        ``"fcn8sfrozen_crfi5p4d5641p4d5161"``, ``"fcn8s_crfi5lp4d5641p4d5161"`` (loose),
        ``"fcn8s_convcrf"`` (see :func:`parse_model_name`).
      num_classes: number of labels.
      backbone: a module used instead of the FCN the name's backbone part would build (the
        part is still validated; ``frozen`` still applies, in place); must have
        ``num_classes == num_classes``.
      rngs, param_dtype: for the backbone and the CRF.
      **backbone_kwargs: passed to the FCN constructor (e.g. ``width=1/16``, ``init="he"``).

    Returns:
      The backbone (no CRF part), :class:`ModelWithCrf` (``use_yx=False``,
      ``shared_scales=False``) or :class:`ModelWithConvCrf` (``compat="2d"``). A frozen
      backbone keeps no ``nnx.Param`` (they become buffers, see :func:`freeze`).

    Raises:
      ValueError: a malformed name (one line), or a backbone whose ``num_classes`` differs.
    """
    parsed = parse_model_name(name)
    if backbone is None:
        backbone = BACKBONES[parsed.backbone](num_classes, rngs=rngs, param_dtype=param_dtype,
                                              **backbone_kwargs)
    elif _check_backbone(backbone) != num_classes:
        raise ValueError(f"backbone.num_classes = {backbone.num_classes} != num_classes = "
                         f"{num_classes}")
    if parsed.head is None:
        return backbone
    if parsed.frozen:
        freeze(backbone)
    if parsed.head == "convcrf":
        return ModelWithConvCrf(backbone, compat="2d", rngs=rngs, param_dtype=param_dtype)
    return ModelWithCrf(backbone, parsed.num_steps, parsed.pairwise, loose=parsed.loose,
                        use_yx=False, shared_scales=False, rngs=rngs, param_dtype=param_dtype)


def loose_state_dict(state_dict: dict, num_steps: int) -> dict:
    """Expand a tied CRF's ``crf.<rest>`` entries to ``crf.steps.<t>.<rest>`` for every step.

    What pacnet's non-strict load does in stage 2 of the PacCRF recipe (a tied stage-1 CRF
    initialises every step of a loose CRF); other entries are kept.
    """
    out = {}
    for key, value in state_dict.items():
        if key.startswith("crf.") and not re.match(r"crf\.steps\.\d+\.", key):
            for t in range(num_steps):
                out[f"crf.steps.{t}.{key[4:]}"] = value
        else:
            out[key] = value
    return out


__all__ = [
    "ModelName",
    "ModelWithConvCrf",
    "ModelWithCrf",
    "PairwiseSpec",
    "create_model",
    "freeze",
    "loose_state_dict",
    "parse_model_name",
    "parse_pairwise",
]
