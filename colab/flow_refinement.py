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
# # Optical flow refinement with probabilistic PAC (PPAC)
#
# PPAC (Wannenwetsch & Roth, CVPR 2020) refines the flow of another estimator: every output
# pixel is a pixel-adaptive average of the input flow around it, guided by image features and
# weighted by the estimator's **confidence**, so wrong, unconfident flow is replaced by
# confident flow from the same object. This notebook, on built-in data (no download):
#
# 1. renders two-frame scenes with exact ground-truth flow, runs the library's image-only
#    baseline estimator and shows its flow, its per-scale confidences and its errors;
# 2. trains a `PPacNet` for a short while with the library's training API (`ppac_jax.train`);
# 3. compares refined and input flow on held-out scenes: flow pictures, error maps, AEE;
# 4. loads the original PPAC Sintel checkpoint **without PyTorch** and applies it to the same
#    scene (needs the checkpoint file; the cell says how to get it and skips otherwise).
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

from ppac_jax import metrics, viz
from ppac_jax.data import baseline, datasets
from ppac_jax.nn import PPacNet
from ppac_jax.train import OptimConfig, TrainConfig, Trainer, replicated, train_and_evaluate
from ppac_jax.train.flow import FlowRefinementTask, model_inputs

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
# ## 1. Built-in scenes and the baseline estimator
#
# `datasets.synthetic_flow_dataset` renders scenes (`ppac_jax.data.synthetic`: textured and
# texture-less layers moving with their own translation, rotation and scale, occluding each
# other) and runs `ppac_jax.data.baseline`, a coarse-to-fine matcher that never sees ground
# truth. At each of 5 scales it computes a match density over displacements; the probability of
# the best match is that scale's **confidence** (the role HD3's match densities play in the
# paper). Every array is NHWC: `image1` `[N, H, W, 3]`, `flow` and `estimate` `[N, H, W, 2]`,
# `confidence` `[N, H, W, 5]`.

# %%
HEIGHT, WIDTH = (32, 48) if SMALL else (96, 128)  # divisible by 16 (the coarsest scale)
NUM_TRAIN, NUM_VAL = (8, 2) if SMALL else (128, 8)
train_data = datasets.synthetic_flow_dataset(range(NUM_TRAIN), height=HEIGHT, width=WIDTH)
val_data = datasets.synthetic_flow_dataset(range(10_000, 10_000 + NUM_VAL), height=HEIGHT,
                                           width=WIDTH)  # held-out seeds
print({k: v.shape for k, v in val_data.items()})
report = baseline.confidence_report(val_data["estimate"], val_data["confidence"],
                                    val_data["flow"], val_data["valid"])
print(f"baseline AEE on the held-out scenes {report['aee']:.3f} px (zero flow: "
      f"{report['aee_zero_flow']:.3f}); correlation of confidence and error: "
      f"Spearman {report['spearman']:.2f} (negative = confident where accurate)")

# %%
# the scene shown in every picture below: the one with the median baseline error
baseline_epe = np.asarray(metrics.epe(val_data["estimate"], val_data["flow"], val_data["valid"]))
i = int(np.argsort(baseline_epe)[len(baseline_epe) // 2])
scene = {k: v[i] for k, v in val_data.items()}
max_flow = float(np.abs(scene["flow"]).max()) + 1e-6
epe_in = float(metrics.epe(scene["estimate"], scene["flow"]))

fig, axes = plt.subplots(2, 4, figsize=(13, 5.4))
pictures = [
    ("frame 1", scene["image1"]), ("frame 2", scene["image2"]),
    ("ground-truth flow", viz.flow_to_color(scene["flow"], max_flow=max_flow)),
    ("colour key", viz.flow_wheel_image(64)),
    (f"baseline flow (EPE {epe_in:.2f} px)", viz.flow_to_color(scene["estimate"], max_flow=max_flow)),
    ("baseline error (blue small, red large)", viz.error_map(scene["estimate"], scene["flow"])),
    ("confidence, coarsest scale", scene["confidence"][..., 0]),
    ("confidence, finest scale", scene["confidence"][..., -1]),
]
for a, (title, picture) in zip(axes.flat, pictures):
    a.imshow(picture, cmap="gray" if picture.ndim == 2 else None, vmin=0 if picture.ndim == 2 else None,
             vmax=1 if picture.ndim == 2 else None)
    a.set_title(title, fontsize=10)
    a.axis("off")
fig.tight_layout()
show(fig, "scene_and_baseline")

# %% [markdown]
# Where the baseline is wrong (red in the error map: texture-less layers, occlusions, motion
# boundaries) its confidences tend to be low (dark). That is what PPAC exploits.
#
# ## 2. A short training run with `ppac_jax.train`
#
# `FlowRefinementTask` turns the dataset into random crops (a pure function of the step, so a
# resumed run sees the same batches), the end-point-error loss and an evaluation (AEE of input
# and refined flow). `train_and_evaluate` runs the jitted, data-parallel training step on all
# devices (the batch is split over them), with Optax, Orbax checkpoints (re-running resumes), a
# progress bar and metric files in `workdir`. The network is the paper's `PPacNet`: a
# confidence branch and an image-guidance branch feeding two probabilistic PAC layers.

# %%
devices = jax.device_count()
batch = -(-(4 if SMALL else 8) // devices) * devices  # a multiple of the device count
steps = 4 if SMALL else 400
crop = (32, 32) if SMALL else (48, 48)


def make_model():
    return PPacNet(5, 7, "pp", True, (5, 5, 5, 2), (3, 15, 15, 10), (2, 2, 2),
                   rngs=nnx.Rngs(0))


task = FlowRefinementTask(make_model, train_data, val_data, batch_size=batch, crop=crop,
                          num_pictures=0)
config = TrainConfig(steps=steps, batch_size=batch, eval_every=steps, checkpoint_every=steps,
                     log_every=max(1, steps // 20),
                     optim=OptimConfig(lr=2e-3, milestones=(int(steps * 0.7),), gamma=0.5))
workdir = tempfile.mkdtemp(prefix="ppac_flow_")
trainer = Trainer(task, config)
result = train_and_evaluate(task, config, workdir, trainer=trainer)
print(f"after {result['step']} steps: held-out AEE {result['aee_input']:.3f} (input) -> "
      f"{result['aee']:.3f} (refined), {100 * result['improvement']:.1f} % better")

# %%
import json

rows = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
train_rows = [row for row in rows if "train/loss" in row]
fig, ax = plt.subplots(figsize=(5, 3))
ax.plot([row["step"] for row in train_rows], [row["train/loss"] for row in train_rows], "o-",
        label="refined (training loss)")
ax.plot([row["step"] for row in train_rows], [row["train/input_epe"] for row in train_rows], "--",
        label="input estimate")
ax.set_xlabel("step")
ax.set_ylabel("EPE on training crops (px)")
ax.legend(fontsize=8)
fig.tight_layout()
show(fig, "training_curve")

# %% [markdown]
# ## 3. Refined vs input flow
#
# `trainer.predict` runs the trained network (jitted, sharded over the devices) on a numpy
# batch. `model_inputs` prepares what the network takes: the estimate, the log-confidences and
# the ImageNet-normalised image.

# %%
refined = trainer.predict(model_inputs(val_data))  # [N, H, W, 2]
epe_before = np.asarray(metrics.epe(val_data["estimate"], val_data["flow"], val_data["valid"]))
epe_after = np.asarray(metrics.epe(refined, val_data["flow"], val_data["valid"]))
print(f"AEE over {NUM_VAL} held-out scenes: input {metrics.aee(epe_before):.3f} px -> refined "
      f"{metrics.aee(epe_after):.3f} px")


def flow_panel(rows, name):
    """rows: [(label, flow)]; one row per flow: colour picture and error map (frame 1 beside
    the ground truth)."""
    fig, axes = plt.subplots(len(rows), 2, figsize=(7, 2.6 * len(rows)), squeeze=False)
    for (label, flow), (left, right) in zip(rows, axes):
        left.imshow(viz.flow_to_color(flow, max_flow=max_flow))
        if flow is scene["flow"]:
            left.set_title(label, fontsize=10)
            right.imshow(scene["image1"])
            right.set_title("frame 1", fontsize=10)
        else:
            e = float(metrics.epe(flow, scene["flow"]))
            left.set_title(f"{label}: EPE {e:.2f} px", fontsize=10)
            right.imshow(viz.error_map(flow, scene["flow"]))
            right.set_title(f"{label}: error map", fontsize=10)
        for a in (left, right):
            a.axis("off")
    fig.tight_layout()
    show(fig, name)


flow_panel([("ground truth", scene["flow"]), ("input", scene["estimate"]),
            ("PPAC refined (trained here)", refined[i])], "refined_vs_input")

# %% [markdown]
# With the notebook's short run the improvement is modest (the full experiment,
# `python -m experiments.train_flow`, trains longer on more scenes: -16 % held-out AEE).
#
# ## 4. The original Sintel checkpoint, without PyTorch
#
# `convert.load_ppacnet` reads the original `.pth` file with a pure-Python unpickler (no
# PyTorch), infers the architecture from the weight shapes and returns a ready `PPacNet`. The
# checkpoint (`flow_refinement_sintel_clean.pth`, from the PPAC authors' release) is not shipped
# with the package: upload it to the runtime (or mount Drive) and set `CHECKPOINT` below or the
# `PPAC_SINTEL_CHECKPOINT` environment variable. It was trained on HD3's flow and confidences
# on Sintel, not on these synthetic scenes and this baseline, so expect a smaller gain here.

# %%
from ppac_jax import convert

CHECKPOINT = os.environ.get("PPAC_SINTEL_CHECKPOINT", "flow_refinement_sintel_clean.pth")
if not os.path.isfile(CHECKPOINT):
    print(f"skipped: checkpoint {CHECKPOINT!r} not found (upload it or set "
          "PPAC_SINTEL_CHECKPOINT to its path)")
else:
    sintel_net = convert.load_ppacnet(CHECKPOINT)  # a PPacNet, same architecture as ours
    # put its weights into the trainer: its compiled predict (and train step, to fine-tune) apply
    _, sintel_params, _ = nnx.split(sintel_net, nnx.Param, ...)
    trainer.state = dict(trainer.state, params=jax.device_put(sintel_params, replicated(trainer.mesh)))
    sintel_refined = trainer.predict(model_inputs(val_data))
    epe_sintel = np.asarray(metrics.epe(sintel_refined, val_data["flow"], val_data["valid"]))
    print(f"Sintel checkpoint on the same held-out scenes: AEE {metrics.aee(epe_before):.3f} -> "
          f"{metrics.aee(epe_sintel):.3f} px (trained here: {metrics.aee(epe_after):.3f} px)")
    flow_panel([("input", scene["estimate"]), ("trained here", refined[i]),
                ("Sintel checkpoint", sintel_refined[i])], "checkpoint_sintel")
