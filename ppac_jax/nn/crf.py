"""PAC-CRF modules: ``PacCRF`` (tied mean-field steps) and ``PacCRFLoose`` (untied steps).

The modules only hold parameters; inference is :func:`ppac_jax.ops.pac_crf`. Attribute names
mirror the original state dict (``messengers.<i>.weight``, ``compat.<i>.weight``,
``unary_weight``, ``pairwise_weights.<i>``; ``steps.<t>.*`` for ``PacCRFLoose``), so
:func:`ppac_jax.convert.load_torch_weights` / ``export_torch_weights`` move weights both ways.

Typical use on top of a segmentation network (NHWC)::

    crf = PacCRF(21, num_steps=5, pairwise_kernels=[
        dict(kernel_size=5, dilation=16, compat_type="4d"),
        dict(kernel_size=5, dilation=64, compat_type="4d")])
    edges = ppac_jax.ops.yxrgb_features(image, yx_scale=80.0, rgb_scale=13.0)  # or just RGB
    log_q = crf(logits, edges)
"""

from __future__ import annotations

from typing import Mapping, Optional, Sequence, Union

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ppac_jax.nn import fillers
from ppac_jax.ops import crf as crf_ops

from ppac_jax.nn.layers import Buffer

DEFAULT_SEED = 0
_TERM_ARGS = ("kernel_size", "dilation", "blur", "compat_type", "spatial_filter",
              "pairwise_weight")


class _Weight(nnx.Module):
    """Holds the ``weight`` of one original sub-module (a messenger or compatibility conv)."""

    def __init__(self, weight, *, trainable: bool = True):
        kind = nnx.Param if trainable else Buffer
        self.weight = kind(jnp.asarray(weight), torch_layout="OIHW")


def _as_kernel_list(pairwise_kernels) -> list:
    if pairwise_kernels is None:
        return []
    if isinstance(pairwise_kernels, Mapping):
        return [dict(pairwise_kernels)]
    kernels = list(pairwise_kernels)
    for i, spec in enumerate(kernels):
        if not isinstance(spec, Mapping):
            raise ValueError(f"pairwise_kernels[{i}] must be a dict of add_pairwise_kernel "
                             f"arguments, got {spec!r}")
        unknown = set(spec) - set(_TERM_ARGS)
        if unknown:
            raise ValueError(f"pairwise_kernels[{i}] has unknown keys {sorted(unknown)}; "
                             f"allowed: {_TERM_ARGS}")
    return [dict(s) for s in kernels]


class PacCRF(nnx.Module):
    """Fully learnable PAC-CRF with ``num_steps`` tied mean-field iterations.

    Args:
      channels: number of labels ``C``.
      num_steps: mean-field iterations.
      final_output: ``"log_Q"`` (unnormalised log marginals), ``"softmax"`` or
        ``"log_softmax"``.
      perturbed_init: initialise ``4d`` and spatial ``2d``/``potts`` messengers with the
        ``crf_perturbed`` filler (``crf`` plus small noise) instead of ``crf``.
      fixed_weighting: keep ``unary_weight`` and every pairwise weight constant.
      unary_weight: initial unary weight (a parameter unless ``fixed_weighting``).
      pairwise_kernels: a dict, or list of dicts, of :meth:`add_pairwise_kernel` arguments.
      rngs: ``nnx.Rngs`` for the random initialisations (default: a fixed seed); one seed is
        drawn from it, and the term added ``i``-th uses ``fold_in(key(seed), i)``.
      param_dtype: dtype of the parameters.

    Call: ``crf(unary, edge_features, *, edge_kernels=None, log_q=None)`` with ``unary``
    ``[B, H, W, C]`` logits and ``edge_features`` ``[B, H, W, D]`` (shared by all terms) or a
    list with one entry per pairwise term (``na`` entries ignored); returns ``[B, H, W, C]``.

    As in the original, a pairwise weight is learned only for ``potts`` terms without spatial
    filter (and not ``fixed_weighting``); every other ``pairwise_weights.<i>`` is a parameter
    that the computation does not use (its gradient is exactly zero) and the constant initial
    value is used instead. ``potts`` terms store and use ``-pairwise_weight``.
    """

    def __init__(self, channels: int, num_steps: int, *, final_output: str = "log_Q",
                 perturbed_init: bool = True, fixed_weighting: bool = False,
                 unary_weight: float = 1.0,
                 pairwise_kernels: Union[Mapping, Sequence[Mapping], None] = None,
                 rngs: Optional[nnx.Rngs] = None, param_dtype=jnp.float32):
        if isinstance(channels, bool) or not isinstance(channels, (int, np.integer)) \
                or channels < 1:
            raise ValueError(f"channels must be a positive int, got {channels!r}")
        if isinstance(num_steps, bool) or not isinstance(num_steps, (int, np.integer)) \
                or num_steps < 0:
            raise ValueError(f"num_steps must be a non-negative int, got {num_steps!r}")
        if final_output not in crf_ops.FINAL_OUTPUTS:
            raise ValueError(f"final_output must be one of {crf_ops.FINAL_OUTPUTS}, got "
                             f"{final_output!r}")
        self.channels = int(channels)
        self.num_steps = int(num_steps)
        self.final_output = final_output
        self.perturbed_init = bool(perturbed_init)
        self.fixed_weighting = bool(fixed_weighting)
        self.param_dtype = param_dtype
        # a plain int, so that the module's state holds no RNG variables
        self.seed = int(jax.random.randint((rngs or nnx.Rngs(DEFAULT_SEED)).params(), (), 0,
                                           2 ** 31 - 1))
        self.unary_weight_init = float(unary_weight)
        if self.fixed_weighting:
            self.unary_weight = None
        else:
            self.unary_weight = nnx.Param(jnp.asarray(unary_weight, param_dtype),
                                          torch_layout="same")
        self.terms = ()
        self.pairwise_weight_init = ()   # constant value per term (negated for potts)
        self.learn_pairwise_weight = ()  # which pairwise_weights.<i> the computation uses
        self.messengers = nnx.List([])
        self.compat = nnx.List([])
        self.pairwise_weights = nnx.List([])
        for spec in _as_kernel_list(pairwise_kernels):
            self.add_pairwise_kernel(**spec)

    def add_pairwise_kernel(self, kernel_size: int = 3, dilation: int = 1, blur: int = 1,
                            compat_type: str = "4d", spatial_filter: bool = True,
                            pairwise_weight: float = 1.0):
        """Append a pairwise term (see :class:`ppac_jax.ops.crf.PairwiseTerm`).

        Args:
          kernel_size: odd window size ``k``.
          dilation: window dilation (padding ``(k // 2) * dilation``).
          blur: pass messages on a grid pooled by this factor.
          compat_type: ``"na"``, ``"4d"``, ``"2d"`` or ``"potts"``.
          spatial_filter: learnable shared filter for ``2d``/``potts`` (else fixed
            ``crf_pool``).
          pairwise_weight: initial pairwise weight (``potts`` uses its negative).
        """
        term = crf_ops.make_term(kernel_size, dilation=dilation, blur=blur,
                                 compat_type=compat_type, spatial_filter=spatial_filter)
        c, k = self.channels, term.kernel_size
        dtype = self.param_dtype
        key = jax.random.fold_in(jax.random.key(self.seed), len(self.terms))
        if term.compat_type == "na":
            w = fillers.uniform_weight(key, (k, k, c, c), c * k * k, dtype=dtype)
            messenger = _Weight(w)
        elif term.compat_type == "4d" or term.spatial_filter:
            shared = term.shared_filters
            if self.perturbed_init:
                w = fillers.crf_perturbed_weight(key, c, c, k, shared, dtype=dtype)
            else:
                w = fillers.crf_weight(c, c, k, shared)
            messenger = _Weight(jnp.asarray(w, dtype))
        else:
            messenger = _Weight(jnp.asarray(fillers.crf_pool_weight(k), dtype), trainable=False)
        compat = None
        if term.compat_type == "2d":
            compat = _Weight(jnp.asarray((1 - np.eye(c))[None, None], dtype))
        value = -float(pairwise_weight) if term.compat_type == "potts" else float(pairwise_weight)
        learn = (term.compat_type == "potts" and not term.spatial_filter
                 and not self.fixed_weighting)
        self.messengers.append(messenger)
        self.compat.append(compat)
        self.pairwise_weights.append(nnx.Param(jnp.asarray(value, dtype), torch_layout="same"))
        self.terms = self.terms + (term,)
        self.pairwise_weight_init = self.pairwise_weight_init + (value,)
        self.learn_pairwise_weight = self.learn_pairwise_weight + (learn,)
        return self

    # ---------------------------------------------------------------------------------------

    def term_params(self) -> list:
        """The :class:`ppac_jax.ops.crf.TermParams` the computation uses, one per term."""
        params = []
        for i, term in enumerate(self.terms):
            weight = (self.pairwise_weights[i][...] if self.learn_pairwise_weight[i]
                      else self.pairwise_weight_init[i])
            compat = self.compat[i].weight[...][0, 0] if term.compat_type == "2d" else None
            params.append(crf_ops.TermParams(self.messengers[i].weight[...], weight, compat))
        return params

    def unary_weight_value(self):
        return self.unary_weight_init if self.unary_weight is None else self.unary_weight[...]

    def edge_kernels(self, edge_features):
        """Edge kernels of every term (``None`` for ``na``): reuse them across calls with
        ``crf(unary, None, edge_kernels=...)`` when the edge features do not change."""
        return crf_ops.crf_edge_kernels(edge_features, self.terms)

    def __call__(self, unary, edge_features=None, *, edge_kernels=None, log_q=None):
        """``[B, H, W, C]`` unary logits (+ edge features) -> ``[B, H, W, C]`` (final_output)."""
        _check_channels(unary, self.channels)
        return crf_ops.pac_crf(unary, edge_features, self.terms, self.term_params(),
                               self.unary_weight_value(), num_steps=self.num_steps,
                               final_output=self.final_output, log_q=log_q,
                               edge_kernels=edge_kernels)


class PacCRFLoose(nnx.Module):
    """PAC-CRF with untied steps: ``num_steps`` single-step :class:`PacCRF` s (``steps.<t>``),
    each with its own parameters, sharing the edge kernels (computed once).

    Arguments as :class:`PacCRF`. Unlike the original, ``na`` terms work.
    """

    def __init__(self, channels: int, num_steps: int, *, final_output: str = "log_Q",
                 perturbed_init: bool = True, fixed_weighting: bool = False,
                 unary_weight: float = 1.0,
                 pairwise_kernels: Union[Mapping, Sequence[Mapping], None] = None,
                 rngs: Optional[nnx.Rngs] = None, param_dtype=jnp.float32):
        if isinstance(num_steps, bool) or not isinstance(num_steps, (int, np.integer)) \
                or num_steps < 1:
            raise ValueError(f"num_steps must be a positive int, got {num_steps!r}")
        if final_output not in crf_ops.FINAL_OUTPUTS:
            raise ValueError(f"final_output must be one of {crf_ops.FINAL_OUTPUTS}, got "
                             f"{final_output!r}")
        rngs = nnx.Rngs(DEFAULT_SEED) if rngs is None else rngs
        self.channels = int(channels)
        self.num_steps = int(num_steps)
        self.final_output = final_output
        self.steps = nnx.List([
            PacCRF(channels, 1, final_output="log_Q", perturbed_init=perturbed_init,
                   fixed_weighting=fixed_weighting, unary_weight=unary_weight, rngs=rngs,
                   param_dtype=param_dtype)
            for _ in range(num_steps)])
        for spec in _as_kernel_list(pairwise_kernels):
            self.add_pairwise_kernel(**spec)

    def add_pairwise_kernel(self, kernel_size: int = 3, dilation: int = 1, blur: int = 1,
                            compat_type: str = "4d", spatial_filter: bool = True,
                            pairwise_weight: float = 1.0):
        """Append the same pairwise term to every step (see :meth:`PacCRF.add_pairwise_kernel`)."""
        for step in self.steps:
            step.add_pairwise_kernel(kernel_size, dilation, blur, compat_type, spatial_filter,
                                     pairwise_weight)
        return self

    @property
    def terms(self):
        return self.steps[0].terms

    @property
    def learn_pairwise_weight(self):
        """Per term: whether ``steps.<t>.pairwise_weights.<i>`` is used (as :class:`PacCRF`)."""
        return self.steps[0].learn_pairwise_weight

    @property
    def pairwise_weight_init(self):
        """Per term: the constant pairwise weight (negated for potts), as :class:`PacCRF`."""
        return self.steps[0].pairwise_weight_init

    @property
    def unary_weight_init(self):
        return self.steps[0].unary_weight_init

    def edge_kernels(self, edge_features):
        return crf_ops.crf_edge_kernels(edge_features, self.terms)

    def __call__(self, unary, edge_features=None, *, edge_kernels=None, log_q=None):
        """``[B, H, W, C]`` unary logits (+ edge features) -> ``[B, H, W, C]`` (final_output)."""
        _check_channels(unary, self.channels)
        per_step = [step.term_params() for step in self.steps]
        params = []
        for i in range(len(self.terms)):
            fields = [[p[i][f] for p in per_step] for f in range(3)]
            params.append(crf_ops.TermParams(*[
                None if vals[0] is None else jnp.stack([jnp.asarray(v) for v in vals])
                for vals in fields]))
        unary_weight = jnp.stack([jnp.asarray(s.unary_weight_value()) for s in self.steps])
        return crf_ops.pac_crf(unary, edge_features, self.terms, params, unary_weight,
                               num_steps=self.num_steps, final_output=self.final_output,
                               log_q=log_q, edge_kernels=edge_kernels, untied=True)


def _check_channels(unary, channels):
    if getattr(unary, "ndim", None) != 4 or unary.shape[-1] != channels:
        raise ValueError(f"unary must be [B, H, W, {channels}] (NHWC logits), got shape "
                         f"{getattr(unary, 'shape', None)}")


__all__ = ["PacCRF", "PacCRFLoose"]
