"""PPAC flow refinement: train, evaluate and report, on any number of devices.

    python -m experiments.train_flow --workdir runs/flow            # default: synthetic, ~10 min CPU
    python -m experiments.train_flow --workdir /tmp/smoke --smoke   # seconds
    python -m experiments.train_flow --workdir runs/flow --set steps=2000 --set lr=1e-3
    python -m experiments.train_flow --workdir runs/flow --evaluate_only --save_refined
    python -m experiments.train_flow --preset sintel --workdir runs/sintel \
        --set train_list=... --set val_list=... --set estimates_root=...

Re-running the same command resumes from the latest checkpoint in ``--workdir``. All devices
are used (batch sharded over a ``data`` mesh axis, parameters replicated); the global batch must
be divisible by the device count. For several hosts, start one process per host with
``--distributed`` (plus ``--coordinator``/``--num_processes``/``--process_id`` where the cluster
does not provide them), e.g. on two machines sharing ``runs/``:

    python -m experiments.train_flow --workdir runs/flow --distributed \
        --coordinator host0:1234 --num_processes 2 --process_id 0     # on host0
    python -m experiments.train_flow --workdir runs/flow --distributed \
        --coordinator host0:1234 --num_processes 2 --process_id 1     # on host1
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import os
import sys
import time

__all__ = ["main", "build_task", "parse_args"]


def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m experiments.train_flow", description=__doc__.split("\n")[0])
    p.add_argument("--workdir", default="runs/train_flow",
                   help="checkpoints, metrics, pictures and the data cache go here")
    p.add_argument("--preset", default=None, help="default | smoke | sintel | kitti")
    p.add_argument("--smoke", action="store_true", help="tiny configuration (same as --preset smoke)")
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                   help="override a config field (repeatable); --config.FIELD=VALUE works too")
    p.add_argument("--evaluate_only", action="store_true",
                   help="evaluate the best (else latest) checkpoint of --workdir or --pretrained")
    p.add_argument("--save_refined", action="store_true",
                   help="write refined validation flows to WORKDIR/refined (.npy and .flo)")
    p.add_argument("--pretrained", default=None,
                   help="initial weights: a ppac-jax workdir/checkpoint dir, or an original .pth")
    p.add_argument("--fresh", action="store_true", help="do not resume from --workdir")
    p.add_argument("--distributed", action="store_true", help="call jax.distributed.initialize()")
    p.add_argument("--coordinator", default=None, help="host:port of process 0 (with --distributed)")
    p.add_argument("--num_processes", type=int, default=None)
    p.add_argument("--process_id", type=int, default=None)
    p.add_argument("--no_progress", action="store_true", help="no progress bar")
    args, rest = p.parse_known_args(argv)
    i = 0
    while i < len(rest):  # --config.field=value / --config.field value
        item = rest[i]
        if not item.startswith("--config."):
            p.error(f"unrecognized argument: {item}")
        item = item[2:]
        if "=" not in item:
            if i + 1 >= len(rest):
                p.error(f"--{item} needs a value")
            item = f"{item}={rest[i + 1]}"
            i += 1
        args.set.append(item)
        i += 1
    if args.smoke and args.preset not in (None, "smoke"):
        p.error("--smoke and --preset are exclusive")
    args.preset = "smoke" if args.smoke else (args.preset or "default")
    return args


def _config(args):
    from experiments.configs.flow import get_config
    from experiments.configs.overrides import apply_overrides

    return apply_overrides(get_config(args.preset), args.set)


def _crop_common(samples):
    """Crop per-sample dicts to the smallest size (bottom-aligned: KITTI ground truth is there)."""
    h = min(s["image1"].shape[0] for s in samples)
    w = min(s["image1"].shape[1] for s in samples)
    out = []
    for s in samples:
        y0 = s["image1"].shape[0] - h
        out.append({k: (v[y0:, :w] if isinstance(v, type(s["image1"])) else v) for k, v in s.items()})
    return out


def load_data(cfg, workdir, log=print):
    """(train dict [N,...], validation dict or list of per-sample dicts)."""
    import numpy as np

    from ppac_jax.data import datasets

    if cfg.dataset == "synthetic":
        cache = os.path.join(workdir, "data")
        train = datasets.synthetic_flow_dataset(
            range(cfg.data_seed * 1_000_000, cfg.data_seed * 1_000_000 + cfg.num_train_scenes),
            height=cfg.height, width=cfg.width, cache_dir=cache, log=log)
        # held-out scenes: seeds disjoint from every training seed
        val_start = cfg.data_seed * 1_000_000 + 900_000
        val = datasets.synthetic_flow_dataset(range(val_start, val_start + cfg.num_val_scenes),
                                              height=cfg.height, width=cfg.width,
                                              cache_dir=cache, log=log)
        return train, val
    if cfg.dataset == "tfds":  # the synthetic scenes, packed to array_record and read back
        from ppac_jax.data.tfds_builder import PpacFlow, PpacFlowConfig

        name = f"synthetic_{cfg.height}x{cfg.width}_{cfg.num_train_scenes}_{cfg.num_val_scenes}"
        builder = PpacFlow(data_dir=cfg.tfds_data_dir or os.path.join(workdir, "tfds"),
                           config=PpacFlowConfig(name=name, height=cfg.height, width=cfg.width,
                                                 num_train=cfg.num_train_scenes,
                                                 num_validation=cfg.num_val_scenes))
        builder.download_and_prepare(file_format="array_record")
        out = []
        for split in ("train", "validation"):
            source = builder.as_data_source(split=split)
            records = [source[i] for i in range(len(source))]
            arrays = {k: np.stack([r[k] for r in records]) for k in records[0]}
            for k in ("image1", "image2"):
                arrays[k] = arrays[k].astype(np.float32) / 255.0
            out.append(arrays)
        return tuple(out)
    if cfg.dataset == "lists":
        for name in ("train_list", "val_list", "estimates_root"):
            if getattr(cfg, name) is None:
                raise ValueError(f"dataset=lists needs --set {name}=PATH")
        kw = dict(estimates_root=cfg.estimates_root, root=cfg.data_root,
                  missing_confidence=cfg.missing_confidence, levels=cfg.depth_layers_prob[0])
        train = datasets.list_flow_dataset(cfg.train_list, **kw)
        val = datasets.list_flow_dataset(cfg.val_list, **kw)
        if any(s["confidence_source"] == "uniform" for s in train + val):
            log("note: some _prob.npy confidence files are missing; using confidence 1 there")
        return datasets.stack_samples(_crop_common(train)), val
    raise ValueError(f"config field dataset: expected 'synthetic', 'tfds' or 'lists', got "
                     f"{cfg.dataset!r}")


def make_model_factory(cfg):
    def make():
        from flax import nnx

        from ppac_jax.nn import PPacNet

        return PPacNet(cfg.kernel_size_preprocessing, cfg.kernel_size_joint,
                       cfg.conv_specification, True, cfg.depth_layers_prob,
                       cfg.depth_layers_guidance, cfg.depth_layers_joint,
                       rngs=nnx.Rngs(cfg.model_seed), impl=cfg.pac_impl)
    return make


def build_task(cfg, workdir, log=print):
    from ppac_jax.train.flow import FlowRefinementTask

    train, val = load_data(cfg, workdir, log)
    levels = train["confidence"].shape[-1]
    if cfg.depth_layers_prob[0] != levels:
        raise ValueError(f"the data has {levels} confidence levels but depth_layers_prob[0] = "
                         f"{cfg.depth_layers_prob[0]}: set --set depth_layers_prob={levels},...")
    return FlowRefinementTask(make_model_factory(cfg), train, val, batch_size=cfg.batch_size,
                              crop=cfg.crop, seed=cfg.seed, num_pictures=cfg.num_pictures,
                              eval_batch_size=cfg.eval_batch_size, flip=cfg.flip)


def train_config(cfg, progress=True):
    from ppac_jax.train import OptimConfig, TrainConfig

    optim = OptimConfig(lr=cfg.lr, branch_lr=cfg.branch_lr, milestones=cfg.milestones,
                        gamma=cfg.gamma, weight_decay=cfg.weight_decay)
    return TrainConfig(steps=cfg.steps, batch_size=cfg.batch_size, eval_every=cfg.eval_every,
                       checkpoint_every=cfg.checkpoint_every, log_every=cfg.log_every,
                       optim=optim, progress=progress)


def load_pretrained(trainer, path, log=print, pac_impl="auto"):
    """Put weights from ``path`` into ``trainer`` (ppac-jax checkpoint dir, or original .pth)."""
    import jax
    from flax import nnx

    from ppac_jax.train import Checkpointer, replicated

    if not os.path.exists(path):
        raise FileNotFoundError(f"--pretrained: no such file or directory: {path}")
    if path.endswith(".pth"):
        try:
            from ppac_jax.convert import load_ppacnet
        except ImportError:
            raise ValueError("--pretrained .pth needs ppac_jax.convert.load_ppacnet, which this "
                             "installation lacks") from None
        model = load_ppacnet(path, impl=pac_impl)
        _, params, _ = nnx.split(model, nnx.Param, ...)
        ours = trainer.state["params"]
        if jax.tree_util.tree_structure(params) != jax.tree_util.tree_structure(ours):
            raise ValueError(f"--pretrained {path}: the checkpoint's network does not match the "
                             "configured PPacNet (check depth_layers_* and conv_specification)")
        trainer.state = dict(trainer.state, params=jax.device_put(params, replicated(trainer.mesh)))
        log(f"loaded original weights from {path}")
        return
    root = path
    for sub in ("best", "checkpoints"):  # a workdir: prefer its best checkpoint
        if os.path.isdir(os.path.join(path, sub)) and os.listdir(os.path.join(path, sub)):
            root = path
            ck = Checkpointer(root)
            best = sub == "best"
            state = ck.restore(trainer.state, best=best)
            ck.close()
            trainer.state = dict(trainer.state, params=state["params"])
            log(f"loaded {'best' if best else 'latest'} ppac-jax checkpoint from {path}")
            return
    raise FileNotFoundError(f"--pretrained {path}: neither a .pth file nor a workdir with "
                            "checkpoints/ or best/")


def save_refined(task, trainer, workdir, log=print, write=True):
    from ppac_jax.data import io

    out = os.path.join(workdir, "refined")
    if write:
        os.makedirs(out, exist_ok=True)
    k = 0
    names = ([s["name"] for s in task.val_data] if isinstance(task.val_data, list) else None)
    for _, refined in task.refine_all(trainer.predict):
        for r in refined:
            name = names[k].replace(os.sep, "_") if names else f"val_{k:05d}"
            if write:
                io.write_npy(os.path.join(out, name + ".npy"), r)
                io.write_flo(os.path.join(out, name + ".flo"), r)
            k += 1
    log(f"wrote {k} refined flows to {out}")


def export_weights(trainer, workdir, log=print):
    """Write the trainer's weights as WORKDIR/export/ppacnet.pth in the original's format.

    `experiments.refine --checkpoint WORKDIR` and `convert.load_ppacnet` read it; PyTorch users
    load it with `torch.load` + `load_state_dict` of the original PPacNet.
    """
    from ppac_jax import convert

    path = os.path.join(workdir, "export", "ppacnet.pth")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    convert.save_torch_state_dict(convert.export_torch_weights(trainer.model()), path)
    log(f"exported the best weights to {path} (original PPAC state-dict names and layouts)")
    return path


def _summary(metrics, n_val, elapsed):
    return (f"input AEE {metrics['aee_input']:.4f} -> refined AEE {metrics['aee']:.4f} "
            f"({100 * metrics['improvement']:.1f}% relative improvement; outliers "
            f"{metrics['outliers_input']:.2f}% -> {metrics['outliers']:.2f}%) on {n_val} held-out "
            f"images, {elapsed:.0f} s")


def run(args, log=print):
    import jax

    t0 = time.time()
    if args.distributed:
        kw = {k: v for k, v in dict(coordinator_address=args.coordinator,
                                    num_processes=args.num_processes,
                                    process_id=args.process_id).items() if v is not None}
        jax.distributed.initialize(**kw)
    cfg = _config(args)
    if args.pretrained and not os.path.exists(args.pretrained):
        raise FileNotFoundError(f"--pretrained: no such file or directory: {args.pretrained}")
    is_main = jax.process_index() == 0
    log = log if is_main else (lambda *a, **k: None)
    workdir = os.path.abspath(args.workdir)
    os.makedirs(workdir, exist_ok=True)
    from ppac_jax.train import Trainer, train_and_evaluate
    from ppac_jax.train.state import check_batch_size, make_mesh

    check_batch_size(cfg.batch_size, make_mesh())
    log(f"preset {args.preset}, {jax.device_count()} device(s) on {jax.process_count()} "
        f"process(es), global batch {cfg.batch_size}, workdir {workdir}")
    if is_main:
        with open(os.path.join(workdir, "config.json"), "w", encoding="utf-8") as f:
            json.dump(dataclasses.asdict(cfg), f, indent=1)
    task = build_task(cfg, workdir, log)
    n_val = len(task.val_data["flow"]) if isinstance(task.val_data, dict) else len(task.val_data)
    baseline = {}
    if isinstance(task.val_data, dict):
        from ppac_jax.data.baseline import confidence_report

        v = task.val_data
        baseline = confidence_report(v["estimate"], v["confidence"], v["flow"], v["valid"])
        log(f"input estimates on the {n_val} held-out images: AEE {baseline['aee']:.3f} (zero "
            f"flow {baseline['aee_zero_flow']:.3f}); confidence vs error correlation: Pearson "
            f"{baseline['pearson']:.2f}, Spearman {baseline['spearman']:.2f}")
    tcfg = train_config(cfg, progress=not args.no_progress)

    trainer = Trainer(task, tcfg)  # one set of compiled functions for training and saving
    if args.evaluate_only:
        load_pretrained(trainer, args.pretrained or workdir, log, cfg.pac_impl)
        metrics = task.evaluate(trainer.predict, trainer.step, workdir)
    else:
        init = (functools.partial(load_pretrained, path=args.pretrained, log=log,
                                  pac_impl=cfg.pac_impl) if args.pretrained else None)
        metrics = train_and_evaluate(task, tcfg, workdir, resume=not args.fresh, log=log,
                                     init=init, trainer=trainer)
        if metrics.get("interrupted"):
            return 0
        load_pretrained(trainer, workdir, log, cfg.pac_impl)  # the best checkpoint
        if is_main:
            export_weights(trainer, workdir, log)
    if args.save_refined:  # every process predicts (sharded); the main one writes
        save_refined(task, trainer, workdir, log, write=is_main)
    if is_main:
        summary = dict(metrics, elapsed_s=time.time() - t0, preset=args.preset,
                       devices=jax.device_count(),
                       **{f"input_{k}": v for k, v in baseline.items()})
        with open(os.path.join(workdir, "summary.json"), "w", encoding="utf-8") as f:
            json.dump(summary, f, indent=1)
    log(_summary(metrics, n_val, time.time() - t0))
    return 0


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        return run(args)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
