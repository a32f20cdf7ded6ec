"""Joint-upsampling comparison on the built-in scenes: every model trained with the same budget.

    python -m benchmarks.upsample                       # depth and flow, x4 x8 x16
    python -m benchmarks.upsample --tasks depth --factors 8 --steps 400 --out table.md

For each task (depth: RMSE in metres; flow: EPE in pixels) and factor, Bilinear,
JointBilateral (JBU_<2f+1>_<8>_<1/f>, its weight trained too), DJIF, PacJointUpsampleLite and
PacJointUpsample are trained for ``--steps`` steps of the same batches (same seed, crops,
optimiser and schedule; Bilinear has nothing to train) and evaluated on held-out scenes.
Prints one Markdown table (also written to ``--out``) and a JSON line per run.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

MODELS = ("Bilinear", "JointBilateral", "DJIF", "PacJointUpsampleLite", "PacJointUpsample")


def model_name(model: str, factor: int) -> str:
    """The experiment's model name (JointBilateral: ``JBU_<k>_<scale_color>_<scale_space>``)."""
    if model == "JointBilateral":
        return f"JBU_{2 * factor + 1}_8_{1.0 / factor:g}"
    return model


def run_one(task_name, factor, model, args, sources, log):
    import jax

    from experiments.train_upsample import train
    from ppac_jax.train import Trainer
    from ppac_jax.train import cli
    from ppac_jax.train.upsample import JointUpsamplingTask

    config = cli.load_config("experiments.train_upsample.configs", "default")
    config.task = task_name
    config.model.update(model=model_name(model, factor), factor=factor)
    config.train.update(steps=args.steps, batch_size=args.batch_size, crop=args.crop,
                        eval_batch_size=8)
    config.optim.update(lr=args.lr, milestones=(int(args.steps * 0.75),))
    mode, border = train._defaults(config)
    train_source, val_source = sources
    task = JointUpsamplingTask(train.make_model_factory(config), train_source, val_source,
                               factor=factor, task=task_name, batch_size=args.batch_size,
                               crop=args.crop, lowres_mode=mode, eval_border=border, seed=0,
                               num_pictures=0)
    trainer = Trainer(task, train.train_config(config, progress=False))
    n_params = sum(int(x.size) for x in jax.tree_util.tree_leaves(trainer.state["params"]))
    t0, c0 = time.perf_counter(), time.process_time()
    if n_params:
        for step in range(args.steps):
            metrics = trainer.train_step(task.train_batch(step))
        jax.block_until_ready(metrics)
    seconds, cpu_seconds = time.perf_counter() - t0, time.process_time() - c0
    result = task.evaluate(trainer.predict, args.steps, None)
    key = task.best_metric[0]
    row = {"task": task_name, "factor": factor, "model": model, "name": config.model.model,
           "metric": key, "value": result[key], "bilinear": result[f"{key}_bilinear"],
           "train_s": seconds, "train_cpu_s": cpu_seconds, "parameters": n_params,
           "steps": args.steps if n_params else 0}
    log(json.dumps(row))
    return row


def table(rows, args, load):
    lines = [f"Built-in scenes {args.height}x{args.width}: {args.train_scenes} training and "
             f"{args.val_scenes} held-out scenes; every trainable model {args.steps} steps of "
             f"batch {args.batch_size}, {args.crop}x{args.crop} crops, Adam lr {args.lr} "
             f"(x0.1 at 75%); load average at start {load}.", "",
             "| task | factor | model | held-out metric | vs bilinear | train wall (s) | "
             "train CPU (s) | parameters |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        unit = "RMSE (m)" if r["metric"] == "rmse" else "EPE (px)"
        change = round(100 * (r["value"] - r["bilinear"]) / r["bilinear"], 1) + 0.0  # no -0.0
        lines.append(f"| {r['task']} | x{r['factor']} | {r['name']} | {unit} {r['value']:.4f} | "
                     f"{change:+.1f}% | {r['train_s']:.0f} | {r['train_cpu_s']:.0f} | "
                     f"{r['parameters']:,} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.upsample", description=__doc__)
    p.add_argument("--tasks", nargs="+", default=["depth", "flow"], choices=["depth", "flow"])
    p.add_argument("--factors", nargs="+", type=int, default=[4, 8, 16])
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    p.add_argument("--steps", type=int, default=150)
    p.add_argument("--batch_size", type=int, default=8)
    p.add_argument("--crop", type=int, default=64)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--height", type=int, default=64)
    p.add_argument("--width", type=int, default=96)
    p.add_argument("--train_scenes", type=int, default=64)
    p.add_argument("--val_scenes", type=int, default=16)
    p.add_argument("--out", default=None, help="also write the table to this Markdown file")
    args = p.parse_args(argv)
    import os

    from ppac_jax.data.upsampling_sources import synthetic_source

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    sources = {task_name: (synthetic_source(range(args.train_scenes), height=args.height,
                                            width=args.width, task=task_name),
                           synthetic_source(range(900_000, 900_000 + args.val_scenes),
                                            height=args.height, width=args.width,
                                            task=task_name))
               for task_name in args.tasks}
    rows = []
    for factor in args.factors:  # factor-major: a partial run still covers every task
        if args.crop % factor:
            raise SystemExit(f"--crop {args.crop} must be a multiple of every factor")
        for task_name in args.tasks:
            for model in args.models:
                rows.append(run_one(task_name, factor, model, args, sources[task_name], print))
    rows.sort(key=lambda r: (args.tasks.index(r["task"]), r["factor"]))
    text = table(rows, args, f"{load:.1f}")
    print(text)
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            f.write(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
