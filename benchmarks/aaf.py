"""CE vs affinity vs AAF: the built-in segmenter trained with each loss, same budget.

    python -m benchmarks.aaf                                  # the committed run (~11 min)
    python -m benchmarks.aaf --steps 40 --seeds 0 --out /tmp/aaf.md     # a quick look

Runs ``python -m experiments.train_segmentation --set method=segmenter --set loss=L`` for each
loss of ``ppac_jax.train.aaf.SEGMENTER_LOSSES`` with identical settings otherwise (default
built-in scenes, the same initialisation, the same batches, the same steps): the stride-4
``TinySegmenter`` trained with cross-entropy, CE + affinity (size 1) or CE + AAF (sizes 1-3,
tables trained by gradient ascent), for each of ``--seeds`` (network initialisation and batch
order). Reported on the experiment's held-out scenes: mIoU,
boundary mIoU (mIoU counted only within ``aaf.boundary_width`` pixels of ground-truth
boundaries, ``metrics.boundary_band``) and pixel accuracy, plus the learnt AAF size weights.
Writes ``--out`` (Markdown) with ``aaf_results.json`` and ``aaf_size_weights.png`` beside it;
the runs' workdirs (metrics.jsonl, pictures) go to ``--workdir``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time

import jax
import numpy as np

from ppac_jax.train.aaf import SEGMENTER_LOSSES, draw_size_weights

HERE = os.path.dirname(os.path.abspath(__file__))
# Adam at 3e-3, halved at step 700: the segmenter trains from scratch (see AAF_RESULTS.md)
DEFAULT_SETS = ["lr=0.003", "milestones=(700,)"]


def _parse(argv):
    p = argparse.ArgumentParser(prog="python -m benchmarks.aaf", description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=1000, help="training steps of every run")
    p.add_argument("--preset", default="default", help="experiment preset (configs/)")
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                   help="extra experiment overrides, applied to every run (after "
                        f"{' '.join(DEFAULT_SETS)})")
    p.add_argument("--seeds", default="0,1", help="comma-separated seeds (model_seed and seed)")
    p.add_argument("--losses", default=",".join(SEGMENTER_LOSSES))
    p.add_argument("--workdir", default="runs/benchmark_aaf")
    p.add_argument("--out", default=os.path.join(HERE, "AAF_RESULTS.md"))
    args = p.parse_args(argv)
    for name in args.losses.split(","):
        if name not in SEGMENTER_LOSSES:
            p.error(f"--losses: {name!r} is not one of {SEGMENTER_LOSSES}")
    return args


def _extra_flags(fv):
    from experiments.train_segmentation.main import _flags

    _flags(fv)


def run_one(loss: str, seed: int, args, log=print) -> dict:
    """One experiment run with ``loss`` and ``seed``; the scenes and baseline cache are shared."""
    from experiments.train_segmentation import train
    from ppac_jax.train import cli

    workdir = os.path.join(args.workdir, f"{loss}_seed{seed}")
    if os.path.exists(workdir):
        shutil.rmtree(workdir)
    os.makedirs(workdir)
    shared = os.path.abspath(os.path.join(args.workdir, "data"))
    os.makedirs(shared, exist_ok=True)
    os.symlink(shared, os.path.join(workdir, "data"))
    sets = ["method=segmenter", f"loss={loss}", f"steps={args.steps}",
            f"eval_every={args.steps}", f"checkpoint_every={args.steps}", f"seed={seed}",
            f"model_seed={seed}"] + DEFAULT_SETS + args.set
    argv = ["--workdir", workdir, "--no_progress", "--fresh"]
    if args.preset != "default":
        argv += ["--preset", args.preset]
    for item in sets:
        argv += ["--set", item]
    config, options = cli.parse_flags(argv, prog="benchmarks.aaf", description="",
                                      configs="experiments.train_segmentation.configs",
                                      default_workdir=workdir, extra_flags=_extra_flags)
    start = time.time()
    summary = train.train_and_evaluate(config, workdir, options, log=log)
    summary["run_seconds"] = round(time.time() - start, 1)
    summary["loss"] = loss
    summary["seed"] = seed
    summary["config"] = {"steps": config.train.steps, "batch_size": config.train.batch_size,
                         "crop": list(config.train.crop), "lr": config.optim.lr,
                         "network_optimizer": config.optim.network_optimizer,
                         "tables_lr": config.aaf.tables_lr,
                         "boundary_width": config.aaf.boundary_width,
                         "scenes": [config.data.num_train_scenes, config.data.num_val_scenes],
                         "size": [config.data.height, config.data.width]}
    return summary


def _mean(rows, key):
    return float(np.mean([r[key] for r in rows]))


def write_report(path: str, results: list, args, total_s: float) -> None:
    folder = os.path.dirname(os.path.abspath(path))
    json_path = os.path.join(folder, "aaf_results.json")
    picture = os.path.join(folder, "aaf_size_weights.png")
    with open(json_path, "w") as f:
        json.dump({"args": vars(args), "default_sets": DEFAULT_SETS, "results": results}, f,
                  indent=1)
    losses = list(dict.fromkeys(r["loss"] for r in results))
    by_loss = {name: [r for r in results if r["loss"] == name] for name in losses}
    seeds = sorted({r["seed"] for r in results})
    aaf = next((r for r in results if r["loss"] == "aaf" and r.get("size_weights")), None)
    if aaf is not None:
        draw_size_weights(picture, aaf["size_weights"],
                          title=f"AAF size weights after {args.steps} steps (seed {aaf['seed']})")
    c = results[0]["config"]
    extra = "".join(f" --set {x}" for x in args.set)
    if args.preset != "default":
        extra = f" --preset {args.preset}" + extra
    lines = [
        "# CE vs affinity vs AAF on the built-in segmentation scenes",
        "",
        f"Command: `python -m benchmarks.aaf --steps {args.steps} --seeds {args.seeds}{extra}` "
        f"(total {total_s / 60:.1f} min on this machine: {jax.device_count()} "
        f"{jax.default_backend()} device(s), 2 CPU cores shared with other work).",
        "",
        "Each run is `python -m experiments.train_segmentation --set method=segmenter --set "
        f"loss=<loss> --set steps={args.steps} --set seed=<s> --set model_seed=<s> "
        + " ".join(f"--set {x}" for x in DEFAULT_SETS) + "`: the built-in stride-4 "
        f"`TinySegmenter` trained from scratch (same initialisation and same batches for every "
        f"loss of a seed) for {c['steps']} steps of {c['batch_size']} {c['crop'][0]}x"
        f"{c['crop'][1]} crops ({c['scenes'][0]} training scenes of {c['size'][0]}x"
        f"{c['size'][1]}); network: {c['network_optimizer']} at lr {c['lr']}; affinity terms at "
        "the output stride on nearest-shrunk labels (margin 3, lambdas 1, decay 10^(-t/T)) added "
        "to the experiment's cross-entropy on the upsampled logits; AAF tables trained by "
        f"gradient ascent (momentum SGD 0.9, poly decay, lr {c['tables_lr']}). Evaluated on "
        f"{c['scenes'][1]} held-out scenes at full resolution after the last step; boundary "
        f"mIoU counts only pixels within {c['boundary_width']} px of a ground-truth boundary "
        "(`metrics.boundary_band`). Numbers in %.",
        "",
        f"| loss | mIoU (mean of {len(seeds)} seeds) | boundary mIoU (mean) | pixel acc. (mean) "
        "| mIoU per seed | boundary mIoU per seed |",
        "|---|---|---|---|---|---|",
    ]
    for name, rows in by_loss.items():
        per = " / ".join(f"{100 * r['miou']:.2f}" for r in rows)
        per_b = " / ".join(f"{100 * r['boundary_miou']:.2f}" for r in rows)
        lines.append(f"| {name} | {100 * _mean(rows, 'miou'):.2f} | "
                     f"{100 * _mean(rows, 'boundary_miou'):.2f} | "
                     f"{100 * _mean(rows, 'pixel_accuracy'):.2f} | {per} | {per_b} |")
    if "ce" in by_loss:
        lines += ["", "Differences to CE, per seed (points):", ""]
        ce = {r["seed"]: r for r in by_loss["ce"]}
        for name, rows in by_loss.items():
            if name == "ce":
                continue
            d = [(100 * (r["miou"] - ce[r["seed"]]["miou"]),
                  100 * (r["boundary_miou"] - ce[r["seed"]]["boundary_miou"]))
                 for r in rows if r["seed"] in ce]
            lines.append(f"- {name}: mIoU " + ", ".join(f"{a:+.2f}" for a, _ in d)
                         + "; boundary mIoU " + ", ".join(f"{b:+.2f}" for _, b in d))
    lines += ["", "Run times (s): " + "; ".join(
        f"{r['loss']} seed {r['seed']} {r['run_seconds']}" for r in results) + "."]
    if aaf is not None:
        sw = aaf["size_weights"]
        lines += ["", "Learnt AAF size weights of seed "
                  f"{aaf['seed']} (softmax over field sizes 3x3, 5x5, 7x7 at the output stride, "
                  "per class of the centre pixel; start 1/3 each; all seeds in "
                  f"`{os.path.basename(json_path)}`), picture `{os.path.basename(picture)}`:", "",
                  "| class | edge 3x3 / 5x5 / 7x7 | not-edge 3x3 / 5x5 / 7x7 |", "|---|---|---|"]
        for name in sw["edge"]:
            e = " / ".join(f"{v:.3f}" for v in sw["edge"][name])
            n = " / ".join(f"{v:.3f}" for v in sw["not_edge"][name])
            lines.append(f"| {name} | {e} | {n} |")
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")


def main(argv=None) -> int:
    args = _parse(argv)
    start = time.time()
    results = []
    for seed in [int(s) for s in args.seeds.split(",")]:
        for loss in args.losses.split(","):
            r = run_one(loss, seed, args)
            print(f"{loss} seed {seed}: mIoU {100 * r['miou']:.2f}, boundary mIoU "
                  f"{100 * r['boundary_miou']:.2f} ({r['run_seconds']} s)")
            results.append(r)
            write_report(args.out, results, args, time.time() - start)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
