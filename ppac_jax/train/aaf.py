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

from typing import Any, Callable, Optional, Union

import jax
import jax.numpy as jnp
import optax

__all__ = ["AAF_GROUPS", "aaf_optimizer", "init_aaf_tables", "poly_learning_rate"]

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
                  step_offset: int = 0) -> optax.GradientTransformation:
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
    tx = optax.multi_transform({"network": descent(1), "head": descent(head_lr_multiplier),
                                "aaf": ascent}, param_labels)
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
