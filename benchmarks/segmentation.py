"""Segmentation on the built-in held-out scenes: what PAC-CRF, hot-swapping and PPAC buy.

Trains (or reuses, when ``ROOT/<method>/summary.json`` exists) ``experiments.train_segmentation``
with its default configuration for each method, then scores on the held-out scenes:

* baseline: the built-in segmenter's logits (the input of every other row);
* ``paccrf``: baseline + PAC-CRF head (frozen-backbone stage, then joint);
* ``hotswap``: the baseline with PAC hot-swapped into its last three convolutions, fine-tuned;
* ``hotswap_paccrf``: both;
* ``ppac``: PPAC refinement of the baseline logits;
* DenseCRF post-processing of the baseline (``pydensecrf2``, optional ``[bench]`` extra; 5
  iterations, Gaussian sxy 3 / compat 3 and bilateral sxy 80 / srgb 13 / compat 10 on the 0-255
  image, the common defaults).

Metrics: mIoU, pixel accuracy, boundary accuracy (pixel accuracy within ``--band`` pixels of a
ground-truth label change, void excluded) and inference time per image (batch 1, jitted, after
a warm-up; DenseCRF: its own time, not counting the baseline).

    python -m benchmarks.segmentation --root runs/segbench --write benchmarks/SEGMENTATION_RESULTS.md
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time

import numpy as np

METHODS = ("paccrf", "hotswap", "hotswap_paccrf", "ppac")


def boundary_band(labels, band: int, ignore: int = 255) -> np.ndarray:
    """``[H, W]`` bool: non-void pixels within ``band`` pixels of a label change."""
    from scipy import ndimage

    edge = np.zeros(labels.shape, bool)
    edge[:, 1:] |= labels[:, 1:] != labels[:, :-1]
    edge[:, :-1] |= labels[:, 1:] != labels[:, :-1]
    edge[1:] |= labels[1:] != labels[:-1]
    edge[:-1] |= labels[1:] != labels[:-1]
    near = ndimage.binary_dilation(edge, iterations=band) if band > 0 else edge
    return near & (labels != ignore)


class Scores:
    def __init__(self, num_classes, band):
        from ppac_jax import metrics

        self.conf = metrics.ConfusionMatrix(num_classes)
        self.band = band
        self.hits = 0
        self.total = 0
        self.seconds = []

    def add(self, pred, labels, seconds=None):
        self.conf.update(pred[None], labels[None])
        near = boundary_band(labels, self.band)
        self.hits += int(np.sum(pred[near] == labels[near]))
        self.total += int(near.sum())
        if seconds is not None:
            self.seconds.append(seconds)

    def row(self):
        return {"miou": 100 * self.conf.miou(), "pixel_accuracy": 100 * self.conf.pixel_accuracy(),
                "boundary_accuracy": 100 * self.hits / max(self.total, 1),
                "ms_per_image": 1000 * float(np.median(self.seconds)) if self.seconds else None}


def densecrf(image01, logits, iterations=5):
    import pydensecrf.densecrf as dcrf
    from pydensecrf.utils import unary_from_softmax

    h, w, c = logits.shape
    z = logits - logits.max(-1, keepdims=True)
    prob = np.exp(z) / np.exp(z).sum(-1, keepdims=True)
    d = dcrf.DenseCRF2D(w, h, c)
    d.setUnaryEnergy(np.ascontiguousarray(unary_from_softmax(np.moveaxis(prob, -1, 0))))
    d.addPairwiseGaussian(sxy=3, compat=3)
    rgb = np.ascontiguousarray((np.clip(image01, 0, 1) * 255).astype(np.uint8))
    d.addPairwiseBilateral(sxy=80, srgb=13, rgbim=rgb, compat=10)
    q = np.array(d.inference(iterations)).reshape(c, h, w)
    return np.argmax(q, 0)


def train_method(method, root, steps, log):
    from experiments.train_segmentation import train
    from experiments.train_segmentation.configs import default
    from ppac_jax.train import cli

    workdir = os.path.join(root, method)
    config = default.get_config()
    config.method = method
    if steps:
        config.train.steps = steps
        config.optim.milestones = tuple(int(m * steps / 300) for m in config.optim.milestones)
    if method == "hotswap":
        # fine-tuning the baseline: on whole scenes as it was trained (64x64 crops cost it
        # ~1 mIoU point with or without PAC layers)
        config.train.crop = (config.data.height, config.data.width)
    data = os.path.join(root, "data")
    if os.path.isdir(data) and not os.path.isdir(os.path.join(workdir, "data")):
        shutil.copytree(data, os.path.join(workdir, "data"))    # one baseline for every row
    if not os.path.exists(os.path.join(workdir, "summary.json")):
        t0 = time.time()
        options = cli.Options(workdir=workdir, preset="default", progress=False)
        train.train_and_evaluate(config, workdir, options, log=log)
        log(f"{method}: trained in {time.time() - t0:.0f} s")
        if not os.path.isdir(data):
            shutil.copytree(os.path.join(workdir, "data"), data)
    return config, workdir


def evaluate_method(config, workdir, scores, log):
    import jax

    from experiments.train_segmentation import train
    from ppac_jax.train import Trainer, restore_params

    task, _, _ = train.build_task(config, workdir, log=lambda *a: None)
    trainer = Trainer(task, train.train_config(config, progress=False))
    restore_params(trainer, workdir, log=lambda *a: None)
    val = task.val_data
    first = {k: val[k][:1] for k in ("image", "logits", "labels")}
    jax.block_until_ready(trainer.predict(first))          # compile
    for i in range(len(val["labels"])):
        batch = {k: val[k][i:i + 1] for k in ("image", "logits", "labels")}
        t0 = time.perf_counter()
        out = np.asarray(jax.block_until_ready(trainer.predict(batch)))
        scores.add(np.argmax(out[0], -1), val["labels"][i], time.perf_counter() - t0)
    return task


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", default="runs/segbench")
    parser.add_argument("--steps", type=int, default=0, help="training steps (0: the default)")
    parser.add_argument("--band", type=int, default=3)
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--write", default=None, help="write a markdown table here")
    args = parser.parse_args(argv)
    log = print
    rows = {}
    task = None
    for method in [m for m in args.methods.split(",") if m]:
        config, workdir = train_method(method, args.root, args.steps, log)
        s = None
        from ppac_jax.data.segmentation_scenes import SegmentationSceneConfig
        num_classes = len(SegmentationSceneConfig().classes)
        s = Scores(num_classes, args.band)
        task = evaluate_method(config, workdir, s, log)
        rows[method] = s.row()
        log(f"{method}: {rows[method]}")
    if task is not None:
        val = task.val_data
        base = Scores(task.num_classes, args.band)
        dense = Scores(task.num_classes, args.band)
        for i in range(len(val["labels"])):
            base.add(np.argmax(val["logits"][i], -1), val["labels"][i])
            t0 = time.perf_counter()
            pred = densecrf(val["image"][i], val["logits"][i])
            dense.add(pred, val["labels"][i], time.perf_counter() - t0)
        rows = {"baseline": base.row(), **rows, "densecrf": dense.row()}
    table = ["| method | mIoU | pixel acc. | boundary acc. (band %d px) | ms / image |" % args.band,
             "|---|---|---|---|---|"]
    for name, r in rows.items():
        ms = "-" if r["ms_per_image"] is None else f"{r['ms_per_image']:.1f}"
        table.append(f"| {name} | {r['miou']:.2f} | {r['pixel_accuracy']:.2f} | "
                     f"{r['boundary_accuracy']:.2f} | {ms} |")
    print("\n".join(table))
    with open(os.path.join(args.root, "results.json"), "w") as f:
        json.dump(rows, f, indent=1)
    if args.write:
        with open(args.write, "w") as f:
            f.write("# Segmentation on the built-in held-out scenes\n\n"
                    f"`python -m benchmarks.segmentation {' '.join(argv or sys.argv[1:])}`\n\n"
                    + "\n".join(table) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
