"""The minimax optimiser of Adaptive Affinity Fields (Ke et al. ECCV 2018) in Optax.

``train_aaf.py`` of twke18/Adaptive_Affinity_Fields trains three groups with
``MomentumOptimizer`` (momentum 0.9, not Nesterov: ``a <- mu a + g; v <- v - lr a``) and the
polynomial decay ``lr(t) = base_lr (1 - t / T)^0.9``:

* the backbone with ``lr``;
* the head (``block5``: PSP pooling, fusion conv, classifier) with ``10 lr``;
* the AAF size-weight tables with ``lr`` applied to the *negated* gradient: gradient ascent,
  so the tables maximise the loss that the network minimises.

Here that is ``optax.multi_transform`` over three labelled groups, ``"network"``, ``"head"``
and ``"aaf"``; the ascent group is ``optax.sgd`` fed with the negated gradient
(``optax.scale(-1.0)`` in front), which is exactly the original's update (its momentum
accumulates the negated gradients). The original's L2 term ``wd * sum ||w||^2 / 2`` over conv
kernels is the gradient term ``wd * w`` (``optax.add_decayed_weights`` with a mask).
"""

from __future__ import annotations

import os
from typing import Any, Callable, Optional, Union

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from ppac_jax import losses

__all__ = ["AAF_GROUPS", "AAFTables", "SEGMENTER_LOSSES", "TABLES_KEY", "aaf_optimizer",
           "aaf_param_labels", "draw_size_weights", "init_aaf_tables", "poly_learning_rate",
           "segmenter_loss", "size_weight_record"]

AAF_GROUPS = ("network", "head", "aaf")
"""Parameter group labels of :func:`aaf_optimizer`."""


def poly_learning_rate(base_lr: float, num_steps: int, *, power: float = 0.9,
                       step_offset: int = 0) -> optax.Schedule:
    """``lr(t) = base_lr * (1 - t / num_steps) ** power`` with ``t = count + step_offset``.

    The DeepLab/PSPNet "poly" schedule of the original scripts (``--num-steps`` there is the
    number of steps + 1, so the last step keeps a positive rate). ``step_offset`` starts the
    schedule at a later step (e.g. when momentum restarts at a resumed step). Raises
    ``ValueError`` for ``num_steps < 1`` or a negative ``step_offset``.
    """
    if int(num_steps) < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps!r}")
    if int(step_offset) < 0:
        raise ValueError(f"step_offset must be >= 0, got {step_offset!r}")

    def schedule(count):
        # in JAX's default float type (int32 / int would round to float32 under x64)
        t = jnp.asarray(count + step_offset, jnp.result_type(float))
        return base_lr * jnp.maximum(1 - t / num_steps, 0) ** power

    return schedule


def aaf_optimizer(param_labels: Union[Any, Callable[[Any], Any]], *, base_lr: float,
                  num_steps: int, momentum: float = 0.9, power: float = 0.9,
                  head_lr_multiplier: float = 10.0, weight_decay: float = 0.0,
                  weight_decay_mask: Optional[Union[Any, Callable[[Any], Any]]] = None,
                  step_offset: int = 0,
                  network_optimizer: Optional[optax.GradientTransformation] = None
                  ) -> optax.GradientTransformation:
    """Momentum SGD with poly decay for the network, gradient *ascent* for the AAF tables.

    Args:
      param_labels: a pytree with the structure of the parameters (or a function of the
        parameters returning one) whose leaves are ``"network"``, ``"head"`` or ``"aaf"``
        (:data:`AAF_GROUPS`). Give the two ``[C, 3]`` tables of
        :func:`ppac_jax.losses.aaf_training_loss` the label ``"aaf"``.
      base_lr: learning rate at step 0 (1e-3 in the published stage 1, 1e-4 in stage 2).
      num_steps: ``T`` of the poly schedule (the scripts pass steps + 1).
      momentum: heavy-ball momentum (0.9), accumulators start at 0.
      power: poly exponent (0.9).
      head_lr_multiplier: learning-rate factor of the ``"head"`` group (10 in the original).
      weight_decay: L2 factor ``wd`` (5e-4 in the original) added as ``wd * w`` to the
        gradients where ``weight_decay_mask`` (same forms as ``param_labels``, bool leaves) is
        True (default: every network parameter). Never applied to the ``"aaf"`` group.
      step_offset: the step the first update belongs to (see :func:`poly_learning_rate`).
      network_optimizer: optional transformation that replaces the momentum SGD of the
        ``"network"`` group (e.g. Adam for a small network trained from scratch); the
        ``"head"`` group then uses it too and ``head_lr_multiplier`` is ignored. The tables keep
        the ascent with momentum SGD at the poly rate.

    Returns:
      An ``optax.GradientTransformation``. Feed it the gradient of the loss (the one the network
      minimises) for every group; the ``"aaf"`` group moves *up* that gradient.

    Raises:
      ValueError: bad ``num_steps``/``step_offset``, or a negative ``weight_decay``.
    """
    if weight_decay < 0:
        raise ValueError(f"weight_decay must be >= 0, got {weight_decay!r}")
    lr = poly_learning_rate(base_lr, num_steps, power=power, step_offset=step_offset)

    def descent(multiplier):
        schedule = lr if multiplier == 1 else (lambda count: multiplier * lr(count))
        return optax.sgd(schedule, momentum=momentum)

    ascent = optax.chain(optax.scale(-1.0), optax.sgd(lr, momentum=momentum))
    if network_optimizer is None:
        groups = {"network": descent(1), "head": descent(head_lr_multiplier)}
    else:
        groups = {"network": network_optimizer, "head": network_optimizer}
    tx = optax.multi_transform(dict(groups, aaf=ascent), param_labels)
    if not weight_decay:
        return tx

    def decay_mask(params):
        labels = param_labels(params) if callable(param_labels) else param_labels
        if weight_decay_mask is None:
            user = jax.tree.map(lambda _: True, labels)
        else:
            user = weight_decay_mask(params) if callable(weight_decay_mask) else weight_decay_mask
        return jax.tree.map(lambda label, keep: label != "aaf" and bool(keep), labels, user)

    return optax.chain(optax.add_decayed_weights(weight_decay, decay_mask), tx)


def init_aaf_tables(num_classes: int, dtype=jnp.float32):
    """The two AAF size-weight tables ``(edge_weights, not_edge_weights)``, ``[C, 3]`` zeros
    (uniform ``1/3`` per size after the softmax), as the original initialises them.
    Raises ``ValueError`` for ``num_classes < 1``."""
    if int(num_classes) < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes!r}")
    return jnp.zeros((num_classes, 3), dtype), jnp.zeros((num_classes, 3), dtype)


# ---------------------------------------------------------------------------------------------
# training a segmenter with cross-entropy, affinity or AAF
# ---------------------------------------------------------------------------------------------

SEGMENTER_LOSSES = ("ce", "affinity", "aaf")
"""Training losses of :func:`segmenter_loss`: the original's ``train.py`` (cross-entropy),
``train_affinity.py`` and ``train_aaf.py``."""

TABLES_KEY = "aaf_tables"
"""Name under which models and parameter trees keep the AAF tables (:func:`aaf_param_labels`)."""


class AAFTables(nnx.Module):
    """The two AAF size-weight tables as parameters: ``edge`` and ``not_edge``, ``[C, 3]`` each,
    initialised to 0 (every class weighs sizes 1, 2, 3 by 1/3). Put it in a model under the
    attribute name :data:`TABLES_KEY` so that :func:`aaf_param_labels` finds it."""

    def __init__(self, num_classes: int, *, dtype=jnp.float32):
        edge, not_edge = init_aaf_tables(num_classes, dtype)
        self.edge = nnx.Param(edge)
        self.not_edge = nnx.Param(not_edge)

    def size_weights(self):
        """``(softmax(edge), softmax(not_edge))`` over sizes: ``[C, 3]`` each."""
        return jax.nn.softmax(self.edge.value, -1), jax.nn.softmax(self.not_edge.value, -1)


def _path_names(path):
    return [str(getattr(p, "key", getattr(p, "name", getattr(p, "idx", p)))) for p in path]


def aaf_param_labels(params, *, head_names=()):
    """:func:`aaf_optimizer` labels for a parameter tree (dict or ``nnx.State``): leaves under a
    key :data:`TABLES_KEY` are ``"aaf"``, under one of ``head_names`` ``"head"``, the rest
    ``"network"``."""
    def label(path, _):
        names = _path_names(path)
        if TABLES_KEY in names:
            return "aaf"
        return "head" if any(n in head_names for n in names) else "network"
    return jax.tree_util.tree_map_with_path(label, params)


def segmenter_loss(loss: str, logits, labels, tables=None, *, num_classes: int, step,
                   num_steps: int, margin: float = 3.0, lambda_edge: float = 1.0,
                   lambda_not_edge: float = 1.0):
    """Training loss of a segmenter whose output stride is > 1, as the original's scripts.

    Args:
      loss: ``"ce"`` (cross-entropy), ``"affinity"`` (CE + affinity, field size 1) or ``"aaf"``
        (CE + adaptive affinity over sizes 1-3).
      logits: ``[N, h, w, C]`` logits at the network's output resolution.
      labels: ``[N, H, W]`` integer labels at image resolution (void outside ``[0, C)``);
        shrunk to ``(h, w)`` by nearest neighbour (``losses.shrink_labels``).
      tables: ``(edge, not_edge)`` raw ``[C, 3]`` tables (``"aaf"`` only).
      num_classes, step, num_steps, margin, lambda_edge, lambda_not_edge: as in
        :func:`ppac_jax.losses.aaf_training_loss` (defaults: the published scripts').

    Returns:
      ``(scalar loss, aux dict of scalars)``: ``seg`` always; ``affinity``, ``edge_mean_s<k>``,
      ``not_edge_mean_s<k>`` for the affinity losses.

    Raises:
      ValueError: unknown ``loss`` or missing ``tables`` for ``"aaf"``.
    """
    common = dict(num_classes=num_classes, margin=margin, lambda_edge=lambda_edge,
                  lambda_not_edge=lambda_not_edge, step=step, num_steps=num_steps)
    if loss == "aaf":
        if tables is None:
            raise ValueError("tables: the 'aaf' loss needs the (edge, not_edge) [C, 3] tables")
        terms = losses.aaf_training_terms(logits, labels, *tables, **common)
    elif loss in ("ce", "affinity"):
        terms = losses.affinity_training_terms(logits, labels, **common)
    else:
        raise ValueError(f"loss must be one of {SEGMENTER_LOSSES}, got {loss!r}")
    if loss == "ce":
        return terms.seg, {"seg": terms.seg}
    aux = {"seg": terms.seg, "affinity": terms.affinity}
    sizes = (1,) if loss == "affinity" else losses.AAF_SIZES
    for i, s in enumerate(sizes):
        aux[f"edge_mean_s{s}"] = terms.edge_means[i]
        aux[f"not_edge_mean_s{s}"] = terms.not_edge_means[i]
    return terms.total, aux


def size_weight_record(tables, class_names=None) -> dict:
    """JSON-ready ``{"edge": {class: [w1, w2, w3]}, "not_edge": {...}}`` of the softmaxed
    tables ``(edge, not_edge)`` (raw ``[C, 3]`` each)."""
    out = {}
    for key, table in zip(("edge", "not_edge"), tables):
        w = np.asarray(jax.nn.softmax(jnp.asarray(table, jnp.float32), -1), np.float64)
        names = class_names or [str(c) for c in range(len(w))]
        out[key] = {str(n): [round(float(v), 6) for v in row] for n, row in zip(names, w)}
    return out


def draw_size_weights(path: str, record: dict, *, title: str = "AAF size weights") -> str:
    """Draw a :func:`size_weight_record` as two heat maps (classes x sizes 3x3, 5x5, 7x7) with
    matplotlib and save it as a PNG at ``path``; returns ``path``."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = [k for k in ("edge", "not_edge") if k in record]
    fig, axes = plt.subplots(1, len(keys), figsize=(4.2 * len(keys) + 1.0, 0.45 *
                                                    len(record[keys[0]]) + 1.8), squeeze=False,
                             constrained_layout=True)
    for ax, key in zip(axes[0], keys):
        names = list(record[key])
        w = np.asarray([record[key][n] for n in names])
        im = ax.imshow(w, vmin=0, vmax=1, cmap="viridis", aspect="auto")
        ax.set_xticks(range(3), ["3x3", "5x5", "7x7"])
        ax.set_yticks(range(len(names)), names)
        ax.set_title(key.replace("_", "-"))
        for (r, c), v in np.ndenumerate(w):
            ax.text(c, r, f"{v:.2f}", ha="center", va="center",
                    color="white" if v < 0.6 else "black", fontsize=8)
    fig.colorbar(im, ax=axes[0].tolist(), shrink=0.8)
    fig.suptitle(title)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
