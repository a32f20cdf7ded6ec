"""CE vs affinity vs AAF: the built-in segmenter trained with each loss, same budget.

    python -m benchmarks.aaf                                  # the committed run
    python -m benchmarks.aaf --steps 40 --out /tmp/aaf.md     # a quick look

Runs ``python -m experiments.train_segmentation --set method=segmenter --set loss=L`` for each
loss of ``ppac_jax.train.aaf.SEGMENTER_LOSSES`` with identical settings otherwise (default
built-in scenes, the same initialisation, the same batches, the same steps): the stride-4
``TinySegmenter`` trained with cross-entropy, CE + affinity (size 1) or CE + AAF (sizes 1-3,
tables trained by gradient ascent). Reported on the experiment's held-out scenes: mIoU,
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

from ppac_jax.train.aaf import SEGMENTER_LOSSES, draw_size_weights

HERE = os.path.dirname(os.path.abspath(__file__))


def _parse(argv):
    p = argparse.ArgumentParser(prog="python -m benchmarks.aaf", description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=600, help="training steps of every run")
    p.add_argument("--preset", default="default", help="experiment preset (configs/)")
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                   help="extra experiment overrides, applied to every run")
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


def run_one(loss: str, args, log=print) -> dict:
    """One experiment run with ``loss``; the scenes and baseline cache are shared."""
    from experiments.train_segmentation import train
    from ppac_jax.train import cli

    workdir = os.path.join(args.workdir, loss)
    if os.path.exists(workdir):
        shutil.rmtree(workdir)
    os.makedirs(workdir)
    shared = os.path.abspath(os.path.join(args.workdir, "data"))
    os.makedirs(shared, exist_ok=True)
    os.symlink(shared, os.path.join(workdir, "data"))
    sets = ["method=segmenter", f"loss={loss}", f"steps={args.steps}",
            f"eval_every={args.steps}", f"checkpoint_every={args.steps}"] + args.set
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
    summary["config"] = {"steps": config.train.steps, "batch_size": config.train.batch_size,
                         "crop": list(config.train.crop), "lr": config.optim.lr,
                         "network_optimizer": config.optim.network_optimizer,
                         "tables_lr": config.aaf.tables_lr,
                         "boundary_width": config.aaf.boundary_width,
                         "scenes": [config.data.num_train_scenes, config.data.num_val_scenes],
                         "size": [config.data.height, config.data.width]}
    return summary


def write_report(path: str, results: list, args, total_s: float) -> None:
    folder = os.path.dirname(os.path.abspath(path))
    json_path = os.path.join(folder, "aaf_results.json")
    picture = os.path.join(folder, "aaf_size_weights.png")
    with open(json_path, "w") as f:
        json.dump({"args": vars(args), "results": results}, f, indent=1)
    aaf = next((r for r in results if r["loss"] == "aaf"), None)
    if aaf is not None and aaf.get("size_weights"):
        draw_size_weights(picture, aaf["size_weights"],
                          title=f"AAF size weights after {args.steps} steps")
    ce = next((r for r in results if r["loss"] == "ce"), None)
    c = results[0]["config"]
    extra = "".join(f" --set {x}" for x in args.set)
    if args.preset != "default":
        extra = f" --preset {args.preset}" + extra
    lines = [
        "# CE vs affinity vs AAF on the built-in segmentation scenes",
        "",
        f"Command: `python -m benchmarks.aaf --steps {args.steps}{extra}` (total "
        f"{total_s / 60:.1f} min on this machine: {jax.device_count()} "
        f"{jax.default_backend()} device(s); 2 shared CPU cores).",
        "",
        "Each row is `python -m experiments.train_segmentation --set method=segmenter --set "
        f"loss=<loss> --set steps={args.steps}`: the built-in stride-4 `TinySegmenter` trained "
        f"from the same initialisation on the same {c['steps']} batches of {c['batch_size']} "
        f"{c['crop'][0]}x{c['crop'][1]} crops ({c['scenes'][0]} training scenes of "
        f"{c['size'][0]}x{c['size'][1]}); network: {c['network_optimizer']} at lr {c['lr']}; "
        "affinity terms at the output stride on nearest-shrunk labels (margin 3, lambdas 1, "
        "decay 10^(-t/T)); AAF tables trained by gradient ascent (momentum SGD, poly, lr "
        f"{c['tables_lr']}). Evaluated on {c['scenes'][1]} held-out scenes at full resolution "
        f"(best checkpoint = the last here); boundary mIoU counts only pixels within "
        f"{c['boundary_width']} px of a ground-truth boundary (`metrics.boundary_band`). One "
        "seed: differences below about a point are within run-to-run noise.",
        "",
        "| loss | mIoU | boundary mIoU | pixel acc. | run s |",
        "|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(f"| {r['loss']} | {100 * r['miou']:.2f} | {100 * r['boundary_miou']:.2f} | "
                     f"{100 * r['pixel_accuracy']:.2f} | {r['run_seconds']} |")
    if ce is not None:
        lines += ["", "Differences to CE (points):", ""]
        for r in results:
            if r is not ce:
                lines.append(f"- {r['loss']}: mIoU {100 * (r['miou'] - ce['miou']):+.2f}, "
                             f"boundary mIoU "
                             f"{100 * (r['boundary_miou'] - ce['boundary_miou']):+.2f}")
    if aaf is not None and aaf.get("size_weights"):
        sw = aaf["size_weights"]
        lines += ["", "Learnt AAF size weights (softmax over field sizes 3x3, 5x5, 7x7 at the "
                  "output stride, per class of the centre pixel; start 1/3 each): "
                  f"`{os.path.basename(json_path)}`, picture `{os.path.basename(picture)}`.", "",
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
    for loss in args.losses.split(","):
        r = run_one(loss, args)
        print(f"{loss}: mIoU {100 * r['miou']:.2f}, boundary mIoU {100 * r['boundary_miou']:.2f}"
              f" ({r['run_seconds']} s)")
        results.append(r)
        write_report(args.out, results, args, time.time() - start)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
