# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3
#     name: python3
# ---

# %% [markdown]
# # Segmentation with PAC: PAC-CRF, hot-swapping and Adaptive Affinity Fields
#
# Three ways pixel-adaptive operations sharpen a segmentation network's output along image
# edges, on built-in scenes (no download):
#
# 1. built-in segmentation scenes (6 classes, some told apart only by texture or shape, a void
#    band of label 255 around some objects, as in VOC) and a small baseline segmenter that works
#    at 1/4 resolution, so its labels are coarse at boundaries;
# 2. **PAC-CRF** (Su et al., CVPR 2019): mean-field inference whose messages are pixel-adaptive
#    convolutions over colour and position cleans the baseline's logits (before / after);
# 3. **hot-swapping** (PAC paper, "PAC-FCN"): one line turns convolutions of any NNX model into
#    PAC layers with the same weights (identical output for a constant guide), then fine-tuning
#    lets them follow the image;
# 4. **Adaptive Affinity Fields** (Ke et al., ECCV 2018): a pairwise affinity loss over
#    neighbourhoods of sizes 1-3 whose per-class size weights are learnt by gradient *ascent*
#    (a minimax game); we draw the learnt weights per class.
#
# Labels are drawn in the Pascal VOC palette. It runs in a few minutes on a Colab CPU runtime
# and uses a GPU or TPU when one is attached.

# %%
# Install ppac-jax from its repository (pip install ...) unless it is already importable.
import importlib.util
import os
import subprocess
import sys

# where this repository lives (a fork, a mirror): set PPAC_JAX_REPOSITORY or edit the default
REPOSITORY = os.environ.get("PPAC_JAX_REPOSITORY", "git+https://github.com/ppac-jax/ppac-jax")
if importlib.util.find_spec("ppac_jax") is None:
    subprocess.run([sys.executable, "-m", "pip", "install", "-q",
                    f"ppac-jax[notebooks] @ {REPOSITORY}"], check=True)

# %%
import os

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
import optax
from flax import nnx

from ppac_jax import losses, metrics, nn, ops, viz
from ppac_jax.data import segmentation_baseline as baseline
from ppac_jax.data import segmentation_scenes as scenes
from ppac_jax.data.transforms import normalize_imagenet

SMALL = os.environ.get("PPAC_NOTEBOOK_SMALL") == "1"  # tiny sizes (used by the tests)
OUT = os.environ.get("PPAC_NOTEBOOK_OUT")  # also save every figure here (used by the tests)


def show(fig, name):
    """Display a figure (and save it as OUT/name.png when PPAC_NOTEBOOK_OUT is set)."""
    if OUT:
        fig.savefig(os.path.join(OUT, f"{name}.png"), dpi=72, bbox_inches="tight")
    plt.show()
    plt.close(fig)


print("JAX", jax.__version__, "on", jax.devices())

# %% [markdown]
# ## 1. Built-in scenes and a baseline segmenter
#
# `scenes.make_segmentation_scenes` renders images `[N, H, W, 3]` with labels `[N, H, W]`
# (class index, 255 = void). `baseline.train_segmenter` trains a small network that sees the
# image through two stride-2 convolutions and bilinearly upsamples its logits, as DeepLab's
# are: its mistakes come from the coarse resolution and from classes that share a colour.

# %%
C = scenes.NUM_CLASSES
HEIGHT, WIDTH = (32, 48) if SMALL else (96, 128)  # divisible by 4
NUM_TRAIN, NUM_VAL = (8, 2) if SMALL else (64, 8)
train = scenes.make_segmentation_scenes(range(NUM_TRAIN), height=HEIGHT, width=WIDTH)
val = scenes.make_segmentation_scenes(range(10_000, 10_000 + NUM_VAL), height=HEIGHT, width=WIDTH)
segmenter, final_loss = baseline.train_segmenter(
    train["image"], train["labels"], num_classes=C,
    config=baseline.SegmenterConfig(steps=10 if SMALL else 300))
logits = baseline.predict_logits(segmenter, val["image"])  # [N, H, W, C] full resolution
print("classes:", scenes.CLASS_NAMES, "| logits", logits.shape, f"| final loss {final_loss:.3f}")


def miou(pred):
    """mIoU (%) of predicted labels [N, H, W] on the held-out scenes (void ignored)."""
    cm = metrics.ConfusionMatrix(C)
    cm.update(np.asarray(pred), val["labels"])
    return 100 * cm.miou()


baseline_labels = logits.argmax(-1)
print(f"baseline mIoU on {NUM_VAL} held-out scenes: {miou(baseline_labels):.1f} %")


def label_legend(ax):
    colours = viz.label_to_color(np.arange(C)[None])[0] / 255
    for c, name in enumerate(scenes.CLASS_NAMES):
        ax.bar(0, 0, color=colours[c], label=name)
    ax.bar(0, 0, color=viz.label_to_color(np.array([[255]]))[0, 0] / 255, label="void (255)")
    ax.legend(loc="center", fontsize=8, frameon=False)
    ax.axis("off")


# %% [markdown]
# ## 2. PAC-CRF cleans the baseline's logits
#
# `nn.PacCRF(C, num_steps, pairwise_kernels=[...])` runs mean-field inference: at every step
# each pixel's class distribution receives messages from its neighbours through a PAC whose
# adapting kernel compares position and colour (`ops.yxrgb_features`): neighbours of the same
# colour vote, neighbours across an edge do not. Here it is not trained: its compatibility
# filters start from the `crf` initialisation (a Potts-like prior).

# %%
crf = nn.PacCRF(C, 5, perturbed_init=False, pairwise_kernels=[
    dict(kernel_size=5, dilation=1, compat_type="4d"),
    dict(kernel_size=5, dilation=4, compat_type="4d")])
edges = ops.yxrgb_features(jnp.asarray(val["image"]), yx_scale=16.0, rgb_scale=0.1)
crf_apply = nnx.jit(lambda crf, unary, edges: crf(unary, edges))
crf_labels = np.asarray(crf_apply(crf, jnp.asarray(logits), edges)).argmax(-1)
print(f"mIoU: baseline {miou(baseline_labels):.1f} % -> PAC-CRF {miou(crf_labels):.1f} %")

i = 0  # the scene shown below
fig, axes = plt.subplots(1, 5, figsize=(15, 2.8), gridspec_kw=dict(width_ratios=[1, 1, 1, 1, 0.5]))
for a, (title, picture) in zip(axes, [
        ("image", val["image"][i]), ("ground truth", viz.label_to_color(val["labels"][i])),
        ("baseline", viz.label_to_color(baseline_labels[i])),
        ("PAC-CRF", viz.label_to_color(crf_labels[i]))]):
    a.imshow(picture, interpolation="nearest")
    a.set_title(title)
    a.axis("off")
label_legend(axes[4])
fig.tight_layout()
show(fig, "paccrf_before_after")

# %% [markdown]
# ## 3. Hot-swapping convolutions for PAC
#
# `nn.hot_swap(model, layer_names)` returns a copy of any NNX model whose named convolutions are
# `PacConv2d` layers with the same weights. Their guide is set with `nn.set_guide(model, guide)`
# before each call (each layer resizes it to its own resolution); with a constant guide the
# adapting kernel is 1 and the model computes exactly what it did before.

# %%
swapped = nn.hot_swap(segmenter, ["layers.2", "layers.3", "layers.4"])
images = jnp.asarray(normalize_imagenet(val["image"]))


@nnx.jit
def guided_logits(model, images, guide):
    nn.set_guide(model, guide)
    return model(images)


same = guided_logits(swapped, images, jnp.zeros_like(images))
print("constant guide: max |swapped - original| =",
      float(jnp.max(jnp.abs(same - segmenter(images)))))

# %% [markdown]
# Now the guide is the image itself (colour scaled so that an edge gives a small kernel) and the
# swapped model is fine-tuned for a few steps with the cross-entropy loss (void ignored). For a
# fair comparison, the original model is fine-tuned the same way.

# %%
GUIDE_SIGMA = 0.1  # the guide is the RGB image / GUIDE_SIGMA


def fine_tune(model, steps, guided=False):
    """A copy of `model` after `steps` Adam steps of cross entropy on the training scenes."""
    model = nnx.clone(model)
    optimizer = nnx.Optimizer(model, optax.adam(1e-3), wrt=nnx.Param)
    train_images = jnp.asarray(normalize_imagenet(train["image"]))
    train_guide = jnp.asarray(train["image"]) / GUIDE_SIGMA
    labels = jnp.asarray(train["labels"], jnp.int32)

    @nnx.jit
    def step(model, optimizer, idx):
        def loss_fn(model):
            if guided:
                nn.set_guide(model, train_guide[idx])
            return losses.cross_entropy(model(train_images[idx]), labels[idx])
        loss, grads = nnx.value_and_grad(loss_fn)(model)
        optimizer.update(model, grads)
        return loss

    rng = np.random.default_rng(0)
    for _ in range(steps):
        step(model, optimizer, jnp.asarray(rng.integers(0, NUM_TRAIN, 4)))
    return model


tune_steps = 3 if SMALL else 100
tuned_plain = fine_tune(segmenter, tune_steps)
tuned_pac = fine_tune(swapped, tune_steps, guided=True)
plain_labels = np.asarray(nnx.jit(lambda m, x: m(x))(tuned_plain, images)).argmax(-1)
val_guide = jnp.asarray(val["image"]) / GUIDE_SIGMA
pac_labels = np.asarray(guided_logits(tuned_pac, images, val_guide)).argmax(-1)
print(f"mIoU after {tune_steps} fine-tuning steps: plain {miou(plain_labels):.1f} %, "
      f"hot-swapped PAC {miou(pac_labels):.1f} % (baseline {miou(baseline_labels):.1f} %)")

fig, axes = plt.subplots(1, 4, figsize=(12, 2.8))
for a, (title, picture) in zip(axes, [
        ("ground truth", val["labels"][i]), ("baseline", baseline_labels[i]),
        ("fine-tuned, plain convs", plain_labels[i]), ("fine-tuned, hot-swapped PAC", pac_labels[i])]):
    a.imshow(viz.label_to_color(picture), interpolation="nearest")
    a.set_title(title)
    a.axis("off")
fig.tight_layout()
show(fig, "hot_swap")

# %% [markdown]
# Compare the printed mIoUs: in a run this short the hot-swapped layers have to unlearn the
# change that the image guide makes to their input at edges before they can profit from it, and
# on these scenes they may not overtake plain fine-tuning (the paper fine-tunes an FCN-8s on VOC
# for many epochs). The point here is the mechanics: one line to swap, exact equality for a
# constant guide, and a guide that training can use.

# %% [markdown]
# ## 4. Adaptive Affinity Fields: learnt neighbourhood sizes per class
#
# `losses.aaf_training_loss(logits, labels, edge_weights, not_edge_weights, ...)` adds to the
# cross entropy, for neighbourhood sizes 1, 2 and 3, a term that pulls the predicted
# distributions of same-class neighbours together and pushes those across a label edge at least
# `margin` apart (a hinge on their KL divergence). How much each size counts is a per-class
# `[C, 3]` table (softmax over sizes), trained by gradient **ascent** while the network descends:
# `ppac_jax.train.aaf.aaf_optimizer` is that minimax optimiser in Optax (momentum SGD with the
# poly schedule for the network, the sign-flipped update for the tables).

# %%
from ppac_jax.train import aaf

graphdef, params = nnx.split(segmenter, nnx.Param)
edge_table, not_edge_table = aaf.init_aaf_tables(C)
variables = {"net": params, "edge": edge_table, "not_edge": not_edge_table}
groups = {"net": jax.tree.map(lambda _: "network", params), "edge": "aaf", "not_edge": "aaf"}
aaf_steps = 3 if SMALL else 100
tx = aaf.aaf_optimizer(groups, base_lr=0.01, num_steps=aaf_steps + 1)
opt_state = tx.init(variables)
train_images = jnp.asarray(normalize_imagenet(train["image"]))
train_labels = jnp.asarray(train["labels"], jnp.int32)


@jax.jit
def aaf_step(variables, opt_state, idx, step):
    def loss_fn(v):
        net = nnx.merge(graphdef, v["net"])
        logits = net.low_resolution_logits(train_images[idx])  # the loss shrinks the labels
        return losses.aaf_training_loss(logits, train_labels[idx], v["edge"], v["not_edge"],
                                        num_classes=C, margin=3.0, lambda_edge=1.0,
                                        lambda_not_edge=1.0, step=step, num_steps=aaf_steps)
    loss, grads = jax.value_and_grad(loss_fn)(variables)
    updates, opt_state = tx.update(grads, opt_state, variables)
    return optax.apply_updates(variables, updates), opt_state, loss


rng = np.random.default_rng(1)
for s in range(aaf_steps):
    variables, opt_state, loss = aaf_step(variables, opt_state,
                                          jnp.asarray(rng.integers(0, NUM_TRAIN, 4)), s)
print(f"AAF fine-tuning: {aaf_steps} steps, last loss {float(loss):.3f}, finite: "
      f"{bool(np.isfinite(float(loss)))}")

# softmax over sizes; they start uniform (1/3): red = the size gained weight, blue = lost
weights = {key: np.asarray(jax.nn.softmax(variables[key], axis=-1)) for key in ("edge", "not_edge")}
spread = max(0.01, max(float(np.abs(w - 1 / 3).max()) for w in weights.values()))
fig, axes = plt.subplots(1, 2, figsize=(9, 3.2), layout="constrained")
for a, key, title in [(axes[0], "edge", "edge term"), (axes[1], "not_edge", "not-edge term")]:
    im = a.imshow(weights[key], cmap="RdBu_r", vmin=1 / 3 - spread, vmax=1 / 3 + spread)
    for (c, s), w in np.ndenumerate(weights[key]):
        a.text(s, c, f"{w:.3f}", ha="center", va="center", fontsize=8)
    a.set_xticks(range(3), ["size 1", "size 2", "size 3"])
    a.set_yticks(range(C), scenes.CLASS_NAMES)
    a.set_title(f"AAF size weights, {title}")
fig.colorbar(im, ax=axes.tolist(), shrink=0.8)
show(fig, "aaf_size_weights")

# %% [markdown]
# The tables start uniform and move by gradient ascent: sizes whose affinity term the network
# finds hardest to satisfy gain weight. In a short run they move only a little; the loss stays
# finite throughout (empty neighbour sets contribute 0, never NaN).
