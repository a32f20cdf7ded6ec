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
# # Joint upsampling x8 with pixel-adaptive convolution
#
# Depth sensors give low-resolution depth; cameras give high-resolution colour. Joint upsampling
# uses the colour image to put the upsampled depth's edges where the image's edges are. This
# notebook (the first application of the PAC paper, Su et al. CVPR 2019), on built-in scenes
# with exact depth (no download):
#
# 1. makes a low-resolution depth map (1/8 of the size in each direction) from a scene;
# 2. upsamples it x8 three ways: `Bilinear` (ignores the image), `JointBilateral` (a fixed PAC
#    transposed convolution guided by colour and position) and `PacJointUpsample` (the paper's
#    network, after a short training run with `ppac_jax.train`);
# 3. shows them side by side with error maps and their RMSE on held-out scenes.
#
# It runs in a few minutes on a Colab CPU runtime and uses a GPU or TPU when one is attached.

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
import tempfile

import jax
import matplotlib.pyplot as plt
import numpy as np
from flax import nnx

from ppac_jax import metrics, nn
from ppac_jax.data import upsampling_sources
from ppac_jax.train import OptimConfig, TrainConfig, Trainer, train_and_evaluate
from ppac_jax.train.upsample import JointUpsamplingTask

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
# ## 1. Built-in scenes with exact depth
#
# `upsampling_sources.synthetic_source` renders scenes (`ppac_jax.data.synthetic`): every layer
# is a slanted plane at its own distance, the background farthest, so each picture comes with
# exact dense depth in metres. Records are `{"image": uint8 [H, W, 3], "target": [H, W, 1]}`.
# The task's transform (`task.val_transform`, the original's `AssembleJointUpsamplingInputs`)
# makes the low-resolution input by keeping every 8th pixel, normalises it by its range, and
# removes a 6-pixel border from the evaluation target, as the original does.

# %%
FACTOR = 8
HEIGHT, WIDTH = (48, 64) if SMALL else (96, 128)
NUM_TRAIN, NUM_VAL = (8, 2) if SMALL else (128, 8)
train_source = upsampling_sources.synthetic_source(range(NUM_TRAIN), height=HEIGHT, width=WIDTH,
                                                   task="depth")
val_source = upsampling_sources.synthetic_source(range(900_000, 900_000 + NUM_VAL), height=HEIGHT,
                                                 width=WIDTH, task="depth")  # held-out seeds

devices = jax.device_count()
batch_size = -(-(4 if SMALL else 8) // devices) * devices  # a multiple of the device count
# training steps: PacJointUpsample needs about a thousand (the experiment's default) to beat the
# fixed joint bilateral filter; that is quick on a GPU/TPU, on a CPU the notebook stops at 150
steps = 4 if SMALL else (150 if jax.default_backend() == "cpu" else 1000)
crop = 32 if SMALL else 64  # square training crops, a multiple of the factor


def make_model():
    return nn.PacJointUpsample(FACTOR, rngs=nnx.Rngs(0))


task = JointUpsamplingTask(make_model, train_source, val_source, factor=FACTOR, task="depth",
                           batch_size=batch_size, crop=crop, eval_border=6, num_pictures=0)
samples = [task.val_transform(r["image"], r["target"]) for r in
           (val_source[i] for i in range(NUM_VAL))]
val_batch = {k: np.stack([s[j] for s in samples]) for j, k in
             enumerate(("low", "guide", "target", "raw_range"))}
print({k: v.shape for k, v in val_batch.items()})

# %%
i = 0  # the scene shown in every picture below
record = val_source[i]
low_raw = val_batch["low"][i, ..., 0] * np.ptp(val_batch["raw_range"][i, 0]) + val_batch["raw_range"][i, 0, 0]
depth_range = dict(vmin=float(record["target"].min()), vmax=float(record["target"].max()),
                   cmap="viridis")
fig, axes = plt.subplots(1, 3, figsize=(11, 3))
axes[0].imshow(record["image"])
axes[0].set_title("guide: colour image")
axes[1].imshow(record["target"][..., 0], **depth_range)
axes[1].set_title("ground-truth depth (m)")
im = axes[2].imshow(low_raw, interpolation="nearest", **depth_range)
axes[2].set_title(f"input: depth at 1/{FACTOR} resolution {low_raw.shape}")
fig.colorbar(im, ax=axes[2])
for a in axes:
    a.axis("off")
fig.tight_layout()
show(fig, "scene")

# %% [markdown]
# ## 2. Bilinear and joint bilateral upsampling
#
# Both models take `(target_low [B, h, w, C], guide [B, 8h, 8w, 3])`. `JointBilateral(factor,
# channels, kernel_size, scale_space, scale_color)` is one PAC transposed convolution whose
# adapting kernel compares colour (times `scale_color`) and position (times `scale_space`) and
# is normalised over the real low-resolution samples in the window: no training needed.
# `task.predict(model, batch)` runs a model and undoes the range normalisation.

# %%
predict = nnx.jit(lambda model, batch: task.predict(model, batch))
bilinear = nn.Bilinear(FACTOR)
joint_bilateral = nn.JointBilateral(FACTOR, 1, 15, scale_space=1 / 4, scale_color=1 / 0.05)
predictions = {"Bilinear": np.asarray(predict(bilinear, val_batch)),
               "JointBilateral": np.asarray(predict(joint_bilateral, val_batch))}

# %% [markdown]
# ## 3. Training `PacJointUpsample` briefly
#
# `PacJointUpsample(factor)` is the paper's network: a target branch and a guidance branch whose
# features drive three x2 PAC transposed convolutions, then a few convolutions. The
# `JointUpsamplingTask` makes random crops of the training scenes (the batch of a step is a pure
# function of the step), the L2 loss in normalised units, and an evaluation (RMSE of the network
# and of bilinear upsampling); `train_and_evaluate` runs the jitted data-parallel step on all
# devices with Optax, Orbax checkpoints and metric files in `workdir`.
#
# Unlike the fixed joint bilateral filter, the network has to learn everything: on a CPU runtime
# this notebook trains it for 150 steps (a few minutes), which is **not enough to beat bilinear
# upsampling yet** (compare the printed RMSEs); on a GPU or TPU runtime it trains 1000 steps.
# `python -m experiments.train_upsample` trains it fully.

# %%
config = TrainConfig(steps=steps, batch_size=batch_size, eval_every=steps, checkpoint_every=steps,
                     log_every=max(1, steps // 20),
                     optim=OptimConfig(lr=2e-3, milestones=(int(steps * 0.75),), gamma=0.1))
trainer = Trainer(task, config)
result = train_and_evaluate(task, config, tempfile.mkdtemp(prefix="ppac_upsample_"),
                            trainer=trainer)
print(f"after {result['step']} steps: held-out RMSE {result['rmse_bilinear']:.4f} m (bilinear) "
      f"-> {result['rmse']:.4f} m (PacJointUpsample)")
predictions["PacJointUpsample"] = np.asarray(trainer.predict(val_batch))

# %% [markdown]
# ## 4. Side by side
#
# RMSE (metres) over the held-out scenes, per-image as the original's `th_rmse`; the error maps
# show `|prediction - ground truth|` on one scene, all on the same colour scale.

# %%
target = val_batch["target"]
rmse = {name: float(np.mean([metrics.upsampling_rmse(p[None], t[None]) for p, t in
                             zip(pred, target)])) for name, pred in predictions.items()}
for name, value in rmse.items():
    print(f"{name:18s} RMSE {value:.4f} m")

guide = val_batch["guide"][i]
b = (guide.shape[0] - target.shape[1]) // 2  # the evaluation border
err_max = max(float(np.abs(p[i] - target[i]).max()) for p in predictions.values())
fig, axes = plt.subplots(2, 4, figsize=(13, 5.2), layout="constrained")
axes[0, 0].imshow(guide[b:guide.shape[0] - b, b:guide.shape[1] - b])
axes[0, 0].set_title("guide")
axes[1, 0].imshow(target[i, ..., 0], **depth_range)
axes[1, 0].set_title("ground truth")
for col, (name, pred) in enumerate(predictions.items(), start=1):
    axes[0, col].imshow(pred[i, ..., 0], **depth_range)
    axes[0, col].set_title(f"{name}\nRMSE {rmse[name]:.4f} m", fontsize=10)
    im = axes[1, col].imshow(np.abs(pred[i, ..., 0] - target[i, ..., 0]), cmap="magma", vmin=0,
                             vmax=err_max)
    axes[1, col].set_title(f"{name}: |error|", fontsize=10)
fig.colorbar(im, ax=axes[1, :].tolist(), shrink=0.8, label="m")
for a in axes.flat:
    a.axis("off")
show(fig, "side_by_side")

fig, ax = plt.subplots(figsize=(5, 2.6))
ax.barh(list(rmse), list(rmse.values()), color=["gray", "tab:orange", "tab:blue"])
ax.set_xlabel("held-out RMSE (m), lower is better")
fig.tight_layout()
show(fig, "rmse")
