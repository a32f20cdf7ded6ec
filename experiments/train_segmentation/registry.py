"""The refinement methods and training losses of ``train_segmentation``, keyed by config strings.

``--set method=NAME`` picks ``METHODS[NAME]``, ``--set loss=NAME`` picks ``LOSSES[NAME]``.
To add one, write its functions (here or in a module of this package) and register it::

    register_method("paccrf", Method(build=..., forward=..., make_optimizer=...))
    register_loss("aaf", Loss(make=...))

A *method* says how its model is built, how the batch (image, input logits) flows into it,
which parameters train (``make_optimizer``) and how original weight files load. A *loss* turns
the model's logits and the batch into ``(scalar, aux dict)``. Batches hold ``image``
``[B, H, W, 3]`` float32 RGB in [0, 1], ``logits`` ``[B, H, W, C]`` input logits and ``labels``
``[B, H, W]`` int32 (``config.data.ignore_label`` = void).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Optional

import jax.numpy as jnp

__all__ = ["LOSSES", "METHODS", "Loss", "Method", "get_loss", "get_method", "register_loss",
           "register_method"]


@dataclasses.dataclass(frozen=True)
class Method:
    """A refinement method.

    build: ``(config, num_classes) -> nnx.Module``.
    forward: ``(model, batch) -> logits [B, H, W, C]`` (traced inside jit).
    make_optimizer: optional ``(config, params) -> optax.GradientTransformation`` (parameter
      groups, frozen parts); default: Adam at ``optim.lr`` with ``optim.milestones``.
    load_original: optional ``(path, config, num_classes) -> nnx.Module`` reading an original
      weight file (e.g. ``.pth``) for ``--pretrained``; its params replace the trainer's.
    uses_data_info: ``build`` also takes ``info=`` (the data's info dict, e.g. the trained
      baseline segmenter ``info["segmenter"]`` of the synthetic data).
    """

    build: Callable[[Any, int], Any]
    forward: Callable[[Any, dict], Any]
    make_optimizer: Optional[Callable[[Any, Any], Any]] = None
    load_original: Optional[Callable[[str, Any, int], Any]] = None
    uses_data_info: bool = False


@dataclasses.dataclass(frozen=True)
class Loss:
    """A training loss: ``make(config) -> fn(model, logits, batch) -> (scalar, aux dict)``."""

    make: Callable[[Any], Callable[[Any, Any, dict], tuple]]


METHODS: dict[str, Method] = {}
LOSSES: dict[str, Loss] = {}


def register_method(name: str, method: Method) -> None:
    """Make ``method`` available as ``--set method=<name>``."""
    METHODS[name] = method


def register_loss(name: str, loss: Loss) -> None:
    """Make ``loss`` available as ``--set loss=<name>``."""
    LOSSES[name] = loss


def get_method(name: str) -> Method:
    """The registered method ``name``; ValueError listing the choices otherwise."""
    if name not in METHODS:
        raise ValueError(f"config field method: unknown method {name!r}; choose one of "
                         f"{', '.join(sorted(METHODS))}")
    return METHODS[name]


def get_loss(name: str) -> Loss:
    """The registered loss ``name``; ValueError listing the choices otherwise."""
    if name not in LOSSES:
        raise ValueError(f"config field loss: unknown loss {name!r}; choose one of "
                         f"{', '.join(sorted(LOSSES))}")
    return LOSSES[name]


# ----------------------------------------------------------------------------- PPAC


def _ppac_depths(config, num_classes):
    m = config.model
    prob = tuple(num_classes if d == 0 else int(d) for d in m.depth_layers_prob[:1]) + tuple(
        int(d) for d in m.depth_layers_prob[1:])
    joint = tuple(num_classes if d == 0 else int(d) for d in m.depth_layers_joint)
    if prob[0] != num_classes or joint[0] != num_classes or joint[-1] != num_classes:
        raise ValueError(f"model.depth_layers_prob[0] and depth_layers_joint[0], [-1] must equal "
                         f"the {num_classes} classes of the data (or be 0), got "
                         f"{m.depth_layers_prob} and {m.depth_layers_joint}")
    return prob, joint


def build_ppac(config, num_classes):
    """PPacNet (SPEC §2) on ``num_classes`` logit channels, joint biases zeroed (the original)."""
    from flax import nnx

    from ppac_jax.nn import PPacNet

    m = config.model
    prob, joint = _ppac_depths(config, num_classes)
    return PPacNet(m.kernel_size_preprocessing, m.kernel_size_joint, m.conv_specification,
                   m.shared_filters, prob, tuple(m.depth_layers_guidance), joint,
                   bias_zero_init=True, rngs=nnx.Rngs(m.model_seed), impl=m.pac_impl)


_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


def imagenet_normalize(image):
    """``[..., 3]`` RGB in [0, 1] -> ImageNet-normalised (jnp, inside jit)."""
    mean = jnp.asarray(_IMAGENET_MEAN, image.dtype)
    std = jnp.asarray(_IMAGENET_STD, image.dtype)
    return (image - mean) / std


def ppac_forward(model, batch):
    """PPAC's inputs (SPEC_wave2 3.2): logits, ``log(max(softmax, 1e-20))``, normalised RGB."""
    from ppac_jax.losses import safe_log_softmax_probabilities

    logits = batch["logits"]
    return model(logits, safe_log_softmax_probabilities(logits), imagenet_normalize(batch["image"]))


def ppac_optimizer(config, params):
    """Adam; the guidance and probability branches at ``optim.preprocessing_lr`` when set
    (the original's parameter groups), the joint layers at ``optim.lr``."""
    from ppac_jax.train import OptimConfig, make_optimizer

    o = config.optim
    groups = () if o.preprocessing_lr is None else (
        ("network_guidance", o.preprocessing_lr), ("network_prob", o.preprocessing_lr))
    return make_optimizer(OptimConfig(lr=o.lr, group_lr=groups, milestones=tuple(o.milestones),
                                      gamma=o.gamma, weight_decay=o.weight_decay), params)


def load_original_ppac(path, config, num_classes):
    """An original PPacNet checkpoint (``segmentation_refinement_pascal.pth``) as a PPacNet."""
    from ppac_jax.convert import load_ppacnet

    return load_ppacnet(path, impl=config.model.pac_impl)


register_method("ppac", Method(build=build_ppac, forward=ppac_forward,
                               make_optimizer=ppac_optimizer, load_original=load_original_ppac))


# ----------------------------------------------------------------------------- losses


def make_cross_entropy(config):
    """Cross entropy over the non-void pixels (PPAC's ``CrossEntropyNet``, pacnet ``ce``)."""
    from ppac_jax.losses import cross_entropy

    ignore = config.data.ignore_label

    def fn(model, logits, batch):
        loss = cross_entropy(logits, batch["labels"], ignore_label=ignore)
        return loss, {"input_ce": cross_entropy(batch["logits"], batch["labels"],
                                                ignore_label=ignore)}
    return fn


register_loss("ce", Loss(make=make_cross_entropy))


# Methods and losses of other modules register themselves when imported (they import this one).
from experiments.train_segmentation import aaf as _aaf  # noqa: E402,F401  (segmenter, affinity, aaf)
from experiments.train_segmentation import pac_methods as _pac  # noqa: E402,F401  (paccrf, hotswap)
