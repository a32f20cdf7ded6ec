"""CE vs affinity vs AAF: the built-in segmenter trained with each loss, same budget.

    python -m benchmarks.aaf                      # the committed run (<= 15 min on 2 CPU cores)
    python -m benchmarks.aaf --steps 50 --out /tmp/aaf.md   # a quick look

For each loss of ``ppac_jax.train.aaf.SEGMENTER_LOSSES`` the stride-4 ``TinySegmenter`` of
``ppac_jax.data.segmentation_baseline`` is trained from the same initialisation on the same
batches of built-in scenes (``ppac_jax.data.segmentation_scenes``) with the original's recipe
(momentum SGD 0.9, poly decay, weight decay 5e-4 on conv kernels, the losses at the network's
output resolution on nearest-shrunk labels, margin 3, lambdas 1, AAF tables trained by gradient
ascent). Reported on held-out scenes at full resolution: mIoU, boundary mIoU (mIoU counted only
within ``--band`` pixels of ground-truth boundaries, ``metrics.boundary_band``) and pixel
accuracy; plus the learnt AAF size weights (JSON and a picture). Results are written to
``--out`` (Markdown), with ``aaf_results.json`` and ``aaf_size_weights.png`` beside it.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from ppac_jax import metrics
from ppac_jax.data.segmentation_baseline import TinySegmenter, upsample_bilinear
from ppac_jax.data.segmentation_scenes import CLASS_NAMES, NUM_CLASSES, make_segmentation_scenes
from ppac_jax.data.transforms import normalize_imagenet
from ppac_jax.train.aaf import (SEGMENTER_LOSSES, TABLES_KEY, aaf_optimizer, aaf_param_labels,
                                draw_size_weights, init_aaf_tables, segmenter_loss,
                                size_weight_record)

HERE = os.path.dirname(os.path.abspath(__file__))


def _parse(argv):
    p = argparse.ArgumentParser(prog="python -m benchmarks.aaf", description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--batch_size", type=int, default=8)
    p.add_argument("--lr", type=float, default=0.02, help="base learning rate (poly decay)")
    p.add_argument("--adam_lr", type=float, default=0.0,
                   help="> 0: Adam at this rate (cosine decay) for the network instead of SGD")
    p.add_argument("--width", type=int, default=24, help="segmenter width")
    p.add_argument("--train_scenes", type=int, default=256)
    p.add_argument("--val_scenes", type=int, default=64)
    p.add_argument("--height", type=int, default=96)
    p.add_argument("--image_width", type=int, default=128)
    p.add_argument("--band", type=int, default=3, help="boundary band half-width, pixels")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--losses", default=",".join(SEGMENTER_LOSSES))
    p.add_argument("--out", default=os.path.join(HERE, "AAF_RESULTS.md"))
    args = p.parse_args(argv)
    for name in args.losses.split(","):
        if name not in SEGMENTER_LOSSES:
            p.error(f"--losses: {name!r} is not one of {SEGMENTER_LOSSES}")
    return args


def _weight_decay_mask(params):
    return jax.tree_util.tree_map_with_path(
        lambda path, _: "weight" in jax.tree_util.keystr(path), params)


@functools.lru_cache(maxsize=None)
def _step_fn(graphdef, tx, loss, num_steps):
    @jax.jit
    def step(params, opt_state, images, labels, t):
        def f(p):
            logits = nnx.merge(graphdef, p["net"]).low_resolution_logits(images)
            tables = (p[TABLES_KEY]["edge"], p[TABLES_KEY]["not_edge"])
            return segmenter_loss(loss, logits, labels, tables, num_classes=NUM_CLASSES, step=t,
                                  num_steps=num_steps)
        (value, aux), grads = jax.value_and_grad(f, has_aux=True)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, value, aux
    return step


@functools.lru_cache(maxsize=None)
def _predict_fn(graphdef):
    @jax.jit
    def predict(net, images):
        logits = nnx.merge(graphdef, net).low_resolution_logits(images)
        return jnp.argmax(upsample_bilinear(logits, images.shape[1], images.shape[2]), -1)
    return predict


def evaluate(graphdef, net, images, labels, *, band: int, chunk: int = 16) -> dict:
    """mIoU, boundary mIoU and pixel accuracy over ``images`` (normalised) at full resolution."""
    full = metrics.ConfusionMatrix(NUM_CLASSES)
    edge = metrics.ConfusionMatrix(NUM_CLASSES)
    predict = _predict_fn(graphdef)
    for i in range(0, len(images), chunk):
        pred = np.asarray(predict(net, images[i:i + chunk]))
        lab = labels[i:i + chunk]
        full.update(pred, lab)
        edge.update(pred, lab, valid=np.asarray(metrics.boundary_band(lab, width=band)))
    return {"miou": full.miou(), "boundary_miou": edge.miou(),
            "pixel_accuracy": full.pixel_accuracy(),
            "boundary_pixel_accuracy": edge.pixel_accuracy()}


def train_one(loss: str, data: dict, args, log=print) -> dict:
    """Train the segmenter with ``loss``; returns metrics, the size weights and the timing."""
    net = TinySegmenter(NUM_CLASSES, args.width, rngs=nnx.Rngs(args.seed))
    graphdef, net_params = nnx.split(net)
    edge, not_edge = init_aaf_tables(NUM_CLASSES)
    params = {"net": net_params, TABLES_KEY: {"edge": edge, "not_edge": not_edge}}
    num_steps = args.steps + 1  # as the scripts: the last step keeps a positive rate
    network = None
    if args.adam_lr > 0:
        network = optax.adam(optax.cosine_decay_schedule(args.adam_lr, args.steps, alpha=0.05))
    tx = aaf_optimizer(aaf_param_labels, base_lr=args.lr, num_steps=num_steps,
                       weight_decay=5e-4, weight_decay_mask=_weight_decay_mask,
                       network_optimizer=network)
    opt_state = tx.init(params)
    step = _step_fn(graphdef, tx, loss, num_steps)
    rng = np.random.default_rng(args.seed)  # the same batches for every loss
    images, labels = data["train_images"], data["train_labels"]
    start = time.time()
    history = []
    for t in range(args.steps):
        idx = rng.integers(0, len(images), args.batch_size)
        flip = rng.uniform(size=args.batch_size) < 0.5
        batch_images = np.where(flip[:, None, None, None], images[idx, :, ::-1], images[idx])
        batch_labels = np.where(flip[:, None, None], labels[idx, :, ::-1], labels[idx])
        params, opt_state, value, aux = step(params, opt_state, batch_images, batch_labels, t)
        if (t + 1) % max(args.steps // 6, 1) == 0 or t == 0:
            value = float(value)
            if not np.isfinite(value):
                raise FloatingPointError(f"{loss}: non-finite loss at step {t}")
            history.append({"step": t + 1, "loss": value,
                            **{k: float(v) for k, v in aux.items()}})
            log(f"  {loss}: step {t + 1}/{args.steps} loss {value:.4f}")
    train_s = time.time() - start
    result = evaluate(graphdef, params["net"], data["val_images"], data["val_labels"],
                      band=args.band)
    result.update(loss=loss, train_seconds=round(train_s, 1), history=history)
    if loss == "aaf":
        tables = (params[TABLES_KEY]["edge"], params[TABLES_KEY]["not_edge"])
        result["size_weights"] = size_weight_record(tables, CLASS_NAMES)
    return result


def make_data(args) -> dict:
    train = make_segmentation_scenes(range(args.train_scenes), height=args.height,
                                     width=args.image_width)
    val = make_segmentation_scenes(range(100_000, 100_000 + args.val_scenes),
                                   height=args.height, width=args.image_width)
    return {"train_images": normalize_imagenet(train["image"]),
            "train_labels": train["labels"].astype(np.int32),
            "val_images": normalize_imagenet(val["image"]),
            "val_labels": val["labels"].astype(np.int32)}


def write_report(path: str, results: list, args, total_s: float) -> None:
    base = os.path.splitext(path)[0]
    folder = os.path.dirname(os.path.abspath(path))
    json_path = os.path.join(folder, "aaf_results.json")
    picture = os.path.join(folder, "aaf_size_weights.png")
    with open(json_path, "w") as f:
        json.dump({"args": vars(args), "results": results}, f, indent=1)
    aaf = next((r for r in results if r["loss"] == "aaf"), None)
    if aaf is not None:
        draw_size_weights(picture, aaf["size_weights"],
                          title=f"AAF size weights after {args.steps} steps")
    ce = next((r for r in results if r["loss"] == "ce"), None)
    lines = [
        "# CE vs affinity vs AAF on the built-in segmentation scenes",
        "",
        f"Command: `python -m benchmarks.aaf --steps {args.steps} --lr {args.lr} "
        f"--batch_size {args.batch_size}` (total {total_s / 60:.1f} min on this machine, "
        f"{jax.device_count()} {jax.default_backend()} device(s)).",
        "",
        f"The stride-4 `TinySegmenter` (width {args.width}) trained from the same "
        f"initialisation on the same {args.steps} batches of {args.batch_size} built-in scenes "
        f"({args.train_scenes} training scenes, {args.height}x{args.image_width}) with momentum "
        "SGD 0.9, poly decay, weight decay 5e-4, each loss at the output resolution on "
        "nearest-shrunk labels (margin 3, lambdas 1; AAF sizes 1-3 with the tables trained by "
        f"gradient ascent). Evaluated on {args.val_scenes} held-out scenes at full resolution; "
        f"boundary mIoU counts only pixels within {args.band} px of a ground-truth boundary "
        "(`metrics.boundary_band`). One seed: differences of a few tenths of a point are "
        "within run-to-run noise.",
        "",
        "| loss | mIoU | boundary mIoU | pixel acc. | boundary pixel acc. | train s |",
        "|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(f"| {r['loss']} | {100 * r['miou']:.2f} | {100 * r['boundary_miou']:.2f} | "
                     f"{100 * r['pixel_accuracy']:.2f} | "
                     f"{100 * r['boundary_pixel_accuracy']:.2f} | {r['train_seconds']} |")
    if ce is not None:
        lines += ["", "Differences to CE (points):", ""]
        for r in results:
            if r is ce:
                continue
            lines.append(f"- {r['loss']}: mIoU {100 * (r['miou'] - ce['miou']):+.2f}, boundary "
                         f"mIoU {100 * (r['boundary_miou'] - ce['boundary_miou']):+.2f}")
    if aaf is not None:
        lines += ["", "Learnt AAF size weights (softmax over sizes 3x3, 5x5, 7x7 per class; "
                  f"start 1/3 each): `{os.path.basename(json_path)}`, picture "
                  f"`{os.path.basename(picture)}`.", "",
                  "| class | edge 3x3 / 5x5 / 7x7 | not-edge 3x3 / 5x5 / 7x7 |", "|---|---|---|"]
        for name in aaf["size_weights"]["edge"]:
            e = " / ".join(f"{v:.3f}" for v in aaf["size_weights"]["edge"][name])
            n = " / ".join(f"{v:.3f}" for v in aaf["size_weights"]["not_edge"][name])
            lines.append(f"| {name} | {e} | {n} |")
    del base
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")


def main(argv=None) -> int:
    args = _parse(argv)
    start = time.time()
    data = make_data(args)
    print(f"data: {len(data['train_images'])} training, {len(data['val_images'])} held-out "
          f"scenes ({time.time() - start:.0f} s)")
    results = []
    for loss in args.losses.split(","):
        r = train_one(loss, data, args)
        print(f"{loss}: mIoU {100 * r['miou']:.2f}, boundary mIoU {100 * r['boundary_miou']:.2f}"
              f" ({r['train_seconds']} s)")
        results.append(r)
    write_report(args.out, results, args, time.time() - start)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
