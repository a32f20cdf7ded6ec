"""Adaptive Affinity Fields in ``train_segmentation``: the built-in segmenter and the losses.

``--set method=segmenter`` trains the built-in stride-4 ``TinySegmenter`` on the images (the
baseline logits of the batch are not used) together with the two AAF size-weight tables;
``--set loss=ce|affinity|aaf`` picks cross-entropy, CE + affinity (field size 1) or CE + AAF
(sizes 1-3, tables trained by gradient ascent). The affinity terms are computed at the
segmenter's output resolution on nearest-shrunk labels, as in the original's scripts; the CE
term is the experiment's ``ce`` loss on the upsampled logits, so the three losses differ only by
the affinity term. The tables' softmax is logged every ``log_every`` steps to
``metrics.jsonl`` (``train/w_edge_<class>_s<k>``, ``train/w_not_edge_<class>_s<k>``) and drawn
at the end (``WORKDIR/size_weights.png``, ``size_weights.json``).

    python -m experiments.train_segmentation --workdir runs/aaf --set method=segmenter \\
        --set loss=aaf
"""

from __future__ import annotations

import json
import os

import jax.numpy as jnp
import optax
from flax import nnx

from experiments.train_segmentation import registry
from ppac_jax.train.aaf import (TABLES_KEY, AAFTables, aaf_optimizer, aaf_param_labels,
                                draw_size_weights, segmenter_loss, size_weight_record)

__all__ = ["SegmenterWithTables", "build_segmenter", "make_affinity_loss", "segmenter_forward",
           "segmenter_optimizer", "write_size_weights"]


class SegmenterWithTables(nnx.Module):
    """The built-in ``TinySegmenter`` plus the AAF tables (trained only by ``loss=aaf``)."""

    def __init__(self, num_classes: int, width: int, seed: int):
        from ppac_jax.data.segmentation_baseline import TinySegmenter

        self.segmenter = TinySegmenter(num_classes, width, rngs=nnx.Rngs(seed))
        setattr(self, TABLES_KEY, AAFTables(num_classes))


def build_segmenter(config, num_classes):
    return SegmenterWithTables(num_classes, config.baseline.segmenter_width,
                               config.model.model_seed)


def segmenter_forward(model, batch):
    """Full-resolution logits of the segmenter for ``batch["image"]`` (RGB in [0, 1])."""
    return model.segmenter(registry.imagenet_normalize(batch["image"]))


def segmenter_optimizer(config, params):
    """``optim.network_optimizer``: ``"adam"`` (Adam at ``optim.lr`` with the milestones; a small
    network from scratch) or ``"sgd"`` (the original: momentum SGD 0.9 with poly decay from
    ``optim.lr``); the tables always ascend with momentum SGD at ``aaf.tables_lr`` (poly)."""
    o = config.optim
    steps = config.train.steps + 1
    if o.network_optimizer == "adam":
        schedule = optax.piecewise_constant_schedule(
            o.lr, {int(m): o.gamma for m in o.milestones}) if o.milestones else o.lr
        network = optax.adam(schedule)
    elif o.network_optimizer == "sgd":
        network = optax.sgd(lambda t: o.lr * (1 - t / steps) ** 0.9, momentum=0.9)
    else:
        raise ValueError(f"config field optim.network_optimizer: expected 'adam' or 'sgd', got "
                         f"{o.network_optimizer!r}")
    if o.weight_decay:
        network = optax.chain(optax.add_decayed_weights(o.weight_decay), network)
    return aaf_optimizer(aaf_param_labels, base_lr=config.aaf.tables_lr, num_steps=steps,
                         network_optimizer=network)


def make_affinity_loss(kind: str):
    """``registry.Loss.make`` for ``"affinity"`` / ``"aaf"``: the ``ce`` loss plus the decayed
    affinity term (``ppac_jax.train.aaf.segmenter_loss``)."""

    def make(config):
        if kind == "aaf" and config.method != "segmenter":
            raise ValueError(f"loss=aaf trains size-weight tables that only method=segmenter "
                             f"has (got method={config.method}): --set method=segmenter")
        ce = registry.make_cross_entropy(config)
        a = config.aaf

        def fn(model, logits, batch):
            loss, aux = ce(model, logits, batch)
            if "step" not in batch:
                raise ValueError("the affinity losses need batch['step'] (SegmentationTask adds it)")
            segmenter = getattr(model, "segmenter", None)
            low = (logits if segmenter is None else
                   segmenter.low_resolution_logits(registry.imagenet_normalize(batch["image"])))
            tables = getattr(model, TABLES_KEY, None)
            if kind == "aaf" and tables is None:
                raise ValueError("loss=aaf needs a model with AAF tables: --set method=segmenter")
            pair = None if tables is None else (tables.edge.value, tables.not_edge.value)
            _, terms = segmenter_loss(kind, low, batch["labels"], pair,
                                      num_classes=logits.shape[-1], step=batch["step"][0],
                                      num_steps=config.train.steps + 1, margin=a.margin,
                                      lambda_edge=a.lambda_edge,
                                      lambda_not_edge=a.lambda_not_edge)
            aux.update({k: v for k, v in terms.items() if k != "seg"})
            if kind == "aaf":
                for name, table in zip(("edge", "not_edge"), tables.size_weights()):
                    for c in range(table.shape[0]):
                        for s in range(table.shape[1]):
                            aux[f"w_{name}_{c}_s{s + 1}"] = table[c, s]
            return loss + terms["affinity"], aux
        return fn
    return make


def write_size_weights(model, workdir: str, class_names=None, log=print):
    """``WORKDIR/size_weights.json`` and ``.png`` from a model with AAF tables; returns the
    record (None when the model has no tables)."""
    tables = getattr(model, TABLES_KEY, None)
    if tables is None:
        return None
    record = size_weight_record((jnp.asarray(tables.edge.value),
                                 jnp.asarray(tables.not_edge.value)), class_names)
    with open(os.path.join(workdir, "size_weights.json"), "w", encoding="utf-8") as f:
        json.dump(record, f, indent=1)
    path = draw_size_weights(os.path.join(workdir, "size_weights.png"), record)
    log(f"wrote the learnt AAF size weights to {path}")
    return record


registry.register_method("segmenter", registry.Method(build=build_segmenter,
                                                      forward=segmenter_forward,
                                                      make_optimizer=segmenter_optimizer))
registry.register_loss("affinity", registry.Loss(make=make_affinity_loss("affinity")))
registry.register_loss("aaf", registry.Loss(make=make_affinity_loss("aaf")))
