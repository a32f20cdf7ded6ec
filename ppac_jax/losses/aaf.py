"""Affinity field losses: the affinity loss and Adaptive Affinity Fields (AAF).

Ke, Hwang, Liu, Yu, "Adaptive Affinity Fields for Semantic Segmentation", ECCV 2018; the
reference is twke18/Adaptive_Affinity_Fields (TensorFlow 1.4: ``network/aaf/layers.py``,
``network/aaf/losses.py``, ``pyscripts/train/train_affinity.py`` / ``train_aaf.py``). The
semantics are pinned by ``SPEC_aaf.md``; in short:

* A pixel pair ``(i, i + d_k)`` over the 8 ring offsets ``d_k`` of a field size ``s``
  (:func:`ppac_jax.ops.geometry.ring_taps`) is *valid* when the centre, the neighbour and the
  mirrored neighbour ``i - d_k`` are in-image non-void pixels. Void = any label outside
  ``[0, C)``.
* Per class channel ``c`` a valid pair is an *edge* when exactly one of the two pixels has
  class ``c``, else a *non-edge*. Edges get the hinge ``max(0, m - KL)``, non-edges ``KL``,
  with ``KL`` the binary divergence from the neighbour's to the centre's (clipped) probability.
* AAF multiplies each element by a per-class weight of the centre's ground-truth class.

Everything here is dense (``[N, H, W, C, 8]`` values and boolean masks) and static-shaped, so
it jits, vmaps and differentiates. Differences to the original (SPEC_aaf section 7): a mean
over an empty set is 0 instead of NaN (gradients unchanged), labels outside ``[0, C)`` are all
void (also negatives), and means are global over the batch (the original's multi-GPU scripts
average per-device means). Non-finite inputs at void pixels never reach the arithmetic.
"""

from __future__ import annotations

import numbers
from typing import NamedTuple, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from ppac_jax.ops.geometry import ring_neighbours

__all__ = [
    "AAF_SIZES",
    "AffinityTerms",
    "TrainingLossTerms",
    "aaf_training_loss",
    "aaf_training_terms",
    "affinity_terms",
    "affinity_training_loss",
    "affinity_training_terms",
    "edges_from_label",
    "eightcorner_activation",
    "eightway_activation",
    "ignores_from_label",
    "shrink_labels",
]

AAF_SIZES = (1, 2, 3)
"""Field sizes of the AAF loss ("3x3, 5x5, 7x7 patches"); column ``s - 1`` of the tables."""

_CLIP_LOW = 1e-4
# eightway_activation's order (left, right, up, down, left-up, left-down, right-up,
# right-down) as indices into the ring order of ring_taps.
_EIGHTWAY_ORDER = (3, 4, 1, 6, 0, 5, 2, 7)


# ---------------------------------------------------------------------------------------------
# validation
# ---------------------------------------------------------------------------------------------

def _check_int(value, name: str, minimum: int) -> int:
    if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return int(value)


def _labels_nhw(labels, name: str = "labels"):
    """``[N, H, W]`` or ``[N, H, W, 1]`` integer labels -> ``[N, H, W]`` int32."""
    labels = jnp.asarray(labels)
    if labels.ndim == 4 and labels.shape[-1] == 1:
        labels = labels[..., 0]
    if labels.ndim != 3:
        raise ValueError(f"{name} must have shape [N, H, W] (or [N, H, W, 1]), got {labels.shape}")
    if not jnp.issubdtype(labels.dtype, jnp.integer):
        raise ValueError(f"{name} must be integer class indices, got dtype {labels.dtype}")
    return labels.astype(jnp.int32)


def _class_scores(x, name: str, num_classes: int):
    x = jnp.asarray(x)
    if x.ndim != 4:
        raise ValueError(f"{name} must have shape [N, H, W, C], got {x.shape}")
    if x.shape[-1] != num_classes:
        raise ValueError(f"{name} must have num_classes={num_classes} channels, got {x.shape}")
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise ValueError(f"{name} must be floating point, got dtype {x.dtype}")
    return x


def _class_weight(w, name: str, num_classes: int, dtype):
    if w is None:
        return None
    w = jnp.asarray(w, dtype)
    if w.size != num_classes or sum(d != 1 for d in w.shape) > 1:
        raise ValueError(f"{name} must hold one weight per class, shape [{num_classes}], got "
                         f"{w.shape}")
    return w.reshape(num_classes)


def _size_table(t, name: str, num_classes: int, dtype):
    """``[C, 3]`` table (the original's ``[1, 1, 1, C, 1, 3]`` is accepted and reshaped)."""
    t = jnp.asarray(t, dtype)
    n = len(AAF_SIZES)
    if t.size != num_classes * n or t.shape[-1] != n or (
            t.ndim > 1 and t.shape[-2] not in (1, num_classes)):
        raise ValueError(f"{name} must have shape [{num_classes}, {n}] (classes x sizes "
                         f"{AAF_SIZES}), got {t.shape}")
    return t.reshape(num_classes, n)


# ---------------------------------------------------------------------------------------------
# helpers of network/aaf/layers.py
# ---------------------------------------------------------------------------------------------

def eightcorner_activation(x, size: int):
    """The 8 ring neighbours at distance ``size`` of every pixel, zero padded.

    x: ``[N, H, W, Cx]`` -> ``[N, H, W, Cx, 8]``, offsets in the order of
    :func:`ppac_jax.ops.geometry.ring_taps` (``(-s,-s), (-s,0), (-s,s), (0,-s), (0,s), (s,-s),
    (s,0), (s,s)``). Reproduces ``layers.eightcorner_activation``. Raises ``ValueError`` for a
    non-4-D ``x`` or ``size < 1``.
    """
    size = _check_int(size, "size", 1)
    x = jnp.asarray(x)
    if x.ndim != 4:
        raise ValueError(f"x must have shape [N, H, W, C], got {x.shape}")
    return ring_neighbours(x, size)


def eightway_activation(x):
    """The 8 immediate neighbours with edge-replicating padding, in the original's own order.

    x: ``[N, H, W, Cx]`` -> ``[N, H, W, Cx, 8]`` ordered left, right, up, down, left-up,
    left-down, right-up, right-down. Reproduces ``layers.eightway_activation`` (not used by the
    losses). Raises ``ValueError`` for a non-4-D ``x``.
    """
    x = jnp.asarray(x)
    if x.ndim != 4:
        raise ValueError(f"x must have shape [N, H, W, C], got {x.shape}")
    return ring_neighbours(x, 1, mode="edge")[..., list(_EIGHTWAY_ORDER)]


def _void(labels, num_classes: int):
    return (labels < 0) | (labels >= num_classes)


def ignores_from_label(labels, num_classes: int, size: int):
    """Which pixel pairs are ignored: ``[N, H, W]`` int labels -> ``[N, H, W, 8]`` bool.

    ``ignore[i, k]`` is True when the centre ``i``, the neighbour ``i + d_k`` or the mirrored
    neighbour ``i - d_k`` is void (label outside ``[0, num_classes)``) or off the image.
    Reproduces ``layers.ignores_from_label`` (which ignores only labels ``> C - 1``). Raises
    ``ValueError`` for bad shapes, ``num_classes < 1`` or ``size < 1``.
    """
    num_classes = _check_int(num_classes, "num_classes", 1)
    size = _check_int(size, "size", 1)
    void = _void(_labels_nhw(labels), num_classes)
    return ~_valid_pairs(~void, size)


def _valid_pairs(valid_px, size: int):
    """``[N, H, W]`` bool pixel validity -> ``[N, H, W, 8]`` bool pair validity."""
    nb = ring_neighbours(valid_px[..., None], size, pad_value=False)[..., 0, :]
    return valid_px[..., None] & nb & nb[..., ::-1]


def edges_from_label(onehot, size: int, *, ignore_class=255):
    """Raw per-channel edges: ``[N, H, W, C]`` -> ``[N, H, W, C, 8]`` bool.

    ``edge[i, c, k] = onehot[i, c] != onehot[i + d_k, c]`` with off-image neighbours equal to
    ``ignore_class`` in every channel (so True there for a one-hot input). No ignore masking.
    Reproduces ``layers.edges_from_label``. Raises ``ValueError`` for a non-4-D input.
    """
    size = _check_int(size, "size", 1)
    onehot = jnp.asarray(onehot)
    if onehot.ndim != 4:
        raise ValueError(f"onehot must have shape [N, H, W, C], got {onehot.shape}")
    nb = ring_neighbours(onehot, size, pad_value=ignore_class)
    return onehot[..., None] != nb


# ---------------------------------------------------------------------------------------------
# the per-element terms (network/aaf/losses.py)
# ---------------------------------------------------------------------------------------------

def _clip_ties_pass(v, low, high):
    """``clip(v, low, high)`` with TF's gradient: 1 on ``[low, high]`` inclusive, else 0.

    (``jnp.clip`` splits the gradient 0.5/0.5 at the bounds; ``where`` picks one branch.)
    """
    return jnp.where(v < low, low, jnp.where(v > high, high, v))


def _binary_kl(p_nb, p_centre):
    """``KL(Bernoulli(p_nb) || Bernoulli(p_centre))`` on clipped probabilities, as the original
    writes it (one ratio per log)."""
    dtype = p_centre.dtype
    low, high = jnp.asarray(_CLIP_LOW, dtype), jnp.asarray(1.0, dtype)
    p_j, p_i = _clip_ties_pass(p_nb, low, high), _clip_ties_pass(p_centre, low, high)
    q_j, q_i = _clip_ties_pass(1 - p_nb, low, high), _clip_ties_pass(1 - p_centre, low, high)
    return p_j * jnp.log(p_j / p_i) + q_j * jnp.log(q_j / q_i)


class AffinityTerms(NamedTuple):
    """Dense per-element affinity terms of one field size (a pytree; jit/vmap friendly).

    Fields (``[N, H, W, C, 8]``; the last axis is the ring order of ``ring_taps``):
      edge: hinge ``max(0, m - KL)`` (times the centre's class weight), 0 where not
        ``edge_mask``.
      edge_mask: bool, valid pair whose two pixels differ in class channel ``c``.
      not_edge: ``KL`` (times the centre's class weight), 0 where not ``not_edge_mask``.
      not_edge_mask: bool, valid pair that agrees in class channel ``c``.

    ``values[mask]`` (row-major) is the original's variable-length vector output.
    """

    edge: jax.Array
    edge_mask: jax.Array
    not_edge: jax.Array
    not_edge_mask: jax.Array

    @property
    def edge_count(self):
        return jnp.sum(self.edge_mask)

    @property
    def not_edge_count(self):
        return jnp.sum(self.not_edge_mask)

    @property
    def edge_mean(self):
        """Mean over the edge set; 0 (not NaN) when it is empty."""
        return _safe_mean(self.edge, self.edge_mask)

    @property
    def not_edge_mean(self):
        """Mean over the non-edge set; 0 (not NaN) when it is empty."""
        return _safe_mean(self.not_edge, self.not_edge_mask)


def _safe_mean(values, mask):
    count = jnp.sum(mask).astype(values.dtype)
    return jnp.sum(values) / jnp.maximum(count, 1)


def affinity_terms(labels, probs, *, num_classes: int, size: int, margin,
                   edge_weight=None, not_edge_weight=None) -> AffinityTerms:
    """Per-element affinity (``size`` 1, no weights) or adaptive affinity terms of one size.

    Args:
      labels: ``[N, H, W]`` (or ``[N, H, W, 1]``) integer labels at the resolution of
        ``probs``; any value outside ``[0, num_classes)`` is void.
      probs: ``[N, H, W, C]`` class probabilities (a softmax output). Values at void pixels
        are never used (NaN/inf there change nothing).
      num_classes: ``C``.
      size: field size ``s >= 1``: neighbours at offsets in ``{-s, 0, s}^2``.
      margin: the hinge margin ``m`` of edge pairs (the original's ``kld_margin``; 3 in the
        published scripts), in nats.
      edge_weight, not_edge_weight: optional ``[C]`` weights; each element is multiplied by
        the weight of its centre pixel's class (AAF). None = unweighted.

    Returns:
      :class:`AffinityTerms` with dense ``[N, H, W, C, 8]`` values and masks.

    Reproduces ``losses.affinity_loss`` (size 1, no weights) and
    ``losses.adaptive_affinity_loss`` including TensorFlow's gradients: the probability clip
    to ``[1e-4, 1]`` passes the full gradient at its bounds, the hinge none at ``KL == m``.

    Raises:
      ValueError: bad shapes or dtypes, ``num_classes`` not matching ``probs``, ``size < 1``.
    """
    num_classes = _check_int(num_classes, "num_classes", 1)
    size = _check_int(size, "size", 1)
    probs = _class_scores(probs, "probs", num_classes)
    labels = _labels_nhw(labels)
    if labels.shape != probs.shape[:3]:
        raise ValueError(f"labels {labels.shape} and probs {probs.shape} must share [N, H, W]")
    w_e = _class_weight(edge_weight, "edge_weight", num_classes, probs.dtype)
    w_n = _class_weight(not_edge_weight, "not_edge_weight", num_classes, probs.dtype)

    valid_px = ~_void(labels, num_classes)
    pairs = _valid_pairs(valid_px, size)[..., None, :]                     # [N,H,W,1,8]
    onehot = (labels[..., None] == jnp.arange(num_classes)) & valid_px[..., None]
    edge = edges_from_label(onehot.astype(jnp.int32), size)                 # [N,H,W,C,8]
    edge_mask = edge & pairs
    not_edge_mask = ~edge & pairs

    # Select void pixels away before any arithmetic: they only enter masked pairs.
    p = jnp.where(valid_px[..., None], probs, jnp.zeros((), probs.dtype))
    kl = _binary_kl(ring_neighbours(p, size), p[..., None])
    gap = jnp.asarray(margin, probs.dtype) - kl
    hinge = jnp.where(gap > 0, gap, jnp.zeros((), gap.dtype))
    if w_e is not None:
        hinge = _centre_weight(w_e, onehot) * hinge
    if w_n is not None:
        kl = _centre_weight(w_n, onehot) * kl
    zero = jnp.zeros((), probs.dtype)
    return AffinityTerms(edge=jnp.where(edge_mask, hinge, zero), edge_mask=edge_mask,
                         not_edge=jnp.where(not_edge_mask, kl, zero),
                         not_edge_mask=not_edge_mask)


def _centre_weight(w, onehot):
    """``sum_c' w[c'] onehot[i, c']`` as ``[N, H, W, 1, 1]`` (0 at void pixels)."""
    return jnp.sum(jnp.where(onehot, w, jnp.zeros((), w.dtype)), axis=-1)[..., None, None]


# ---------------------------------------------------------------------------------------------
# training compositions (train_affinity.py / train_aaf.py)
# ---------------------------------------------------------------------------------------------

def shrink_labels(labels, out_size: Tuple[int, int]):
    """Nearest-neighbour shrink of crop labels to the network's output grid.

    labels: ``[N, Hc, Wc]`` or ``[N, Hc, Wc, 1]`` integer -> ``[N, h, w]`` int32 with
    ``src = min(floor(dst * (Hc / h)), Hc - 1)`` evaluated in float32, as TF1's
    ``resize_nearest_neighbor`` (no corner alignment, no half-pixel centres) does in the
    original scripts. Raises ``ValueError`` for bad shapes.
    """
    labels = _labels_nhw(labels)
    idx = []
    for axis, out in zip((1, 2), out_size):
        src = labels.shape[axis]
        if not isinstance(out, numbers.Integral) or out < 1:
            raise ValueError(f"out_size must be positive ints, got {out_size!r}")
        scale = np.float32(src) / np.float32(out)
        pos = np.floor(np.arange(out, dtype=np.float32) * scale).astype(np.int64)
        idx.append(np.minimum(pos, src - 1))
    return labels[:, idx[0]][:, :, idx[1]]


def _cross_entropy(logits, labels, *, num_classes: int):
    """The scripts' ``seg_loss``: mean softmax cross-entropy over the non-void pixels of the
    batch (0 if there are none), void = any label outside ``[0, C)`` (unlike
    ``losses.cross_entropy``, which knows one ignore label). Returns ``(mean, count)``."""
    num_classes = _check_int(num_classes, "num_classes", 1)
    logits = _class_scores(logits, "logits", num_classes)
    labels = _labels_nhw(labels)
    valid = ~_void(labels, num_classes)
    z = jnp.where(valid[..., None], logits, jnp.zeros((), logits.dtype))
    y = jnp.where(valid, labels, 0)
    ce = jax.nn.logsumexp(z, axis=-1) - jnp.take_along_axis(z, y[..., None], axis=-1)[..., 0]
    ce = jnp.where(valid, ce, jnp.zeros((), ce.dtype))
    return _safe_mean(ce, valid), jnp.sum(valid)


class TrainingLossTerms(NamedTuple):
    """The parts of a training loss of the original scripts (all jit-friendly scalars).

    seg: cross-entropy mean; affinity: the decayed, lambda-weighted affinity / AAF term;
    total: ``seg + affinity``; dec: the decay ``10^(-step/num_steps)``;
    edge_means / not_edge_means / edge_counts / not_edge_counts: ``[S]`` per field size
    (``S = 1`` for the affinity loss, 3 for AAF); labels: the shrunk ``[N, h, w]`` labels.
    """

    total: jax.Array
    seg: jax.Array
    affinity: jax.Array
    dec: jax.Array
    edge_means: jax.Array
    not_edge_means: jax.Array
    edge_counts: jax.Array
    not_edge_counts: jax.Array
    labels: jax.Array


def _decay(step, num_steps: int, dtype):
    num_steps = _check_int(num_steps, "num_steps", 1)
    step = jnp.asarray(step, dtype)
    return jnp.power(jnp.asarray(10, dtype), -step / jnp.asarray(num_steps, dtype))


def _training_terms(logits, labels, tables, *, num_classes, margin, lambda_edge,
                    lambda_not_edge, step, num_steps, sizes):
    num_classes = _check_int(num_classes, "num_classes", 1)
    num_steps = _check_int(num_steps, "num_steps", 1)
    logits = _class_scores(logits, "logits", num_classes)
    small = shrink_labels(labels, logits.shape[1:3])
    if small.shape[0] != logits.shape[0]:
        raise ValueError(f"labels batch {small.shape[0]} != logits batch {logits.shape[0]}")
    seg, _ = _cross_entropy(logits, small, num_classes=num_classes)
    valid = ~_void(small, num_classes)
    probs = jax.nn.softmax(jnp.where(valid[..., None], logits, 0), axis=-1)
    dtype = logits.dtype
    dec = _decay(step, num_steps, dtype)
    if tables is not None:
        w_e, w_n = (jax.nn.softmax(t, axis=-1) for t in tables)
    e_means, n_means, e_counts, n_counts = [], [], [], []
    for s in sizes:
        weights = {} if tables is None else dict(edge_weight=w_e[:, s - 1],
                                                 not_edge_weight=w_n[:, s - 1])
        t = affinity_terms(small, probs, num_classes=num_classes, size=s, margin=margin,
                           **weights)
        e_means.append(t.edge_mean)
        n_means.append(t.not_edge_mean)
        e_counts.append(t.edge_count)
        n_counts.append(t.not_edge_count)
    e_means, n_means = jnp.stack(e_means), jnp.stack(n_means)
    lam_e = jnp.asarray(lambda_edge, dtype)
    lam_n = jnp.asarray(lambda_not_edge, dtype)
    aff = jnp.sum(e_means * lam_e * dec) + jnp.sum(n_means * lam_n * dec)
    return TrainingLossTerms(total=seg + aff, seg=seg, affinity=aff, dec=dec,
                             edge_means=e_means, not_edge_means=n_means,
                             edge_counts=jnp.stack(e_counts), not_edge_counts=jnp.stack(n_counts),
                             labels=small)


def affinity_training_terms(logits, labels, *, num_classes: int, margin, lambda_edge,
                            lambda_not_edge, step, num_steps: int) -> TrainingLossTerms:
    """All parts of :func:`affinity_training_loss` (same arguments)."""
    return _training_terms(logits, labels, None, num_classes=num_classes, margin=margin,
                           lambda_edge=lambda_edge, lambda_not_edge=lambda_not_edge, step=step,
                           num_steps=num_steps, sizes=(1,))


def affinity_training_loss(logits, labels, *, num_classes: int, margin, lambda_edge,
                           lambda_not_edge, step, num_steps: int):
    """Cross-entropy + affinity loss of ``train_affinity.py`` (scalar).

    ``L = CE + dec * (lambda_edge * mean(edge) + lambda_not_edge * mean(not_edge))`` with field
    size 1 and ``dec = 10^(-step / num_steps)``; means over the entries ``(n, y, x, c, k)`` of
    the whole batch, an empty set contributing 0.

    Args:
      logits: ``[N, h, w, C]`` network scores (stride-8 output in the original).
      labels: ``[N, Hc, Wc]`` (or ``[..., 1]``) integer full-resolution crop labels (void outside
        ``[0, C)``, e.g. 255); shrunk to ``(h, w)`` by :func:`shrink_labels`.
      num_classes: ``C``. margin: hinge margin in nats (3 in the published scripts).
      lambda_edge, lambda_not_edge: weights of the two means (1 and 1 in the scripts).
      step: 0-based training step (may be traced). num_steps: the scripts' ``--num-steps``.

    Raises:
      ValueError: bad shapes/dtypes, ``num_classes`` not matching ``logits``.
    """
    return affinity_training_terms(logits, labels, num_classes=num_classes, margin=margin,
                                   lambda_edge=lambda_edge, lambda_not_edge=lambda_not_edge,
                                   step=step, num_steps=num_steps).total


def aaf_training_terms(logits, labels, edge_weights, not_edge_weights, *, num_classes: int,
                       margin, lambda_edge, lambda_not_edge, step,
                       num_steps: int) -> TrainingLossTerms:
    """All parts of :func:`aaf_training_loss` (same arguments)."""
    num_classes = _check_int(num_classes, "num_classes", 1)
    dtype = jnp.asarray(logits).dtype
    tables = (_size_table(edge_weights, "edge_weights", num_classes, dtype),
              _size_table(not_edge_weights, "not_edge_weights", num_classes, dtype))
    return _training_terms(logits, labels, tables, num_classes=num_classes, margin=margin,
                           lambda_edge=lambda_edge, lambda_not_edge=lambda_not_edge, step=step,
                           num_steps=num_steps, sizes=AAF_SIZES)


def aaf_training_loss(logits, labels, edge_weights, not_edge_weights, *, num_classes: int,
                      margin, lambda_edge, lambda_not_edge, step, num_steps: int):
    """Cross-entropy + Adaptive Affinity Fields loss of ``train_aaf.py`` (scalar).

    ``L = CE + dec * sum_{s=1,2,3} (lambda_edge * mean(e_s) + lambda_not_edge * mean(ne_s))``
    where ``e_s`` / ``ne_s`` are the size-``s`` terms weighted by the centre class's column
    ``s - 1`` of ``softmax(edge_weights, axis=-1)`` / ``softmax(not_edge_weights, axis=-1)``.
    The network minimises ``L``; the tables are trained to *maximise* it (see
    :func:`ppac_jax.train.aaf.aaf_optimizer`).

    Args:
      logits, labels, num_classes, margin, lambda_edge, lambda_not_edge, step, num_steps: as
        in :func:`affinity_training_loss`.
      edge_weights, not_edge_weights: raw ``[C, 3]`` size-weight tables (logits over sizes
        1, 2, 3; initialised to 0 in the original). The original's ``[1, 1, 1, C, 1, 3]``
        variables are accepted too.

    Raises:
      ValueError: bad shapes/dtypes, ``num_classes`` not matching ``logits`` or the tables.
    """
    return aaf_training_terms(logits, labels, edge_weights, not_edge_weights,
                              num_classes=num_classes, margin=margin, lambda_edge=lambda_edge,
                              lambda_not_edge=lambda_not_edge, step=step,
                              num_steps=num_steps).total
