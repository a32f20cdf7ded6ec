"""Segmentation refinement: the task's training code (data, method, pretrained weights, outputs).

``train_and_evaluate(config, workdir, options)`` is what ``python -m
experiments.train_segmentation`` runs; presets are in ``configs/``, methods and losses in
``registry.py``, the command line in ``main.py``.
"""

from __future__ import annotations

import functools
import json
import os
import time

__all__ = ["build_task", "load_data", "load_pretrained", "save_refined", "train_and_evaluate",
           "train_config"]


def load_data(cfg, workdir, log=print):
    """``(train, val, info)``: stacked dicts (synthetic) or lists of per-sample dicts (voc)."""
    d = cfg.data
    if d.dataset == "synthetic":
        from ppac_jax.data.segmentation_baseline import SegmenterConfig
        from ppac_jax.data.segmentation_datasets import synthetic_segmentation_data

        if d.height % 4 or d.width % 4:
            raise ValueError(f"config fields data.height/width must be divisible by 4, got "
                             f"{d.height}x{d.width}")
        b = cfg.baseline
        segmenter = SegmenterConfig(width=b.segmenter_width, steps=b.segmenter_steps,
                                    batch_size=b.segmenter_batch_size, lr=b.segmenter_lr,
                                    seed=b.segmenter_seed)
        return synthetic_segmentation_data(
            height=d.height, width=d.width, num_segmenter_scenes=d.num_segmenter_scenes,
            num_train_scenes=d.num_train_scenes, num_val_scenes=d.num_val_scenes,
            data_seed=d.data_seed, segmenter=segmenter, cache_dir=os.path.join(workdir, "data"),
            log=log)
    if d.dataset == "voc":
        from ppac_jax.data.segmentation_datasets import voc_segmentation_dataset

        if d.logits_root is None:
            raise ValueError("dataset=voc needs --set logits_root=PATH (the baseline's .npy logits)")
        if d.val_list is None:
            raise ValueError("dataset=voc needs --set val_list=PATH")
        kw = dict(logits_root=d.logits_root, num_classes=d.num_classes, root=d.data_root)
        val = voc_segmentation_dataset(d.val_list, **kw)
        train = voc_segmentation_dataset(d.train_list, **kw) if d.train_list else None
        return train, val, {"num_classes": d.num_classes, "class_names": None}
    raise ValueError(f"config field dataset: expected 'synthetic' or 'voc', got {d.dataset!r}")


def build_task(cfg, workdir, log=print, *, evaluate_only=False):
    from experiments.train_segmentation import registry
    from ppac_jax.train.segmentation import SegmentationTask

    if len(cfg.train.crop) != 2:
        raise ValueError(f"config field train.crop: expected (height, width), got {cfg.train.crop}")
    method = registry.get_method(cfg.method)
    loss = registry.get_loss(cfg.loss)
    train, val, info = load_data(cfg, workdir, log)
    if train is None:
        if not evaluate_only:
            raise ValueError("dataset=voc needs --set train_list=PATH to train (or --evaluate_only)")
        train = val
    num_classes = info["num_classes"]
    t = cfg.train
    make_opt = (functools.partial(method.make_optimizer, cfg) if method.make_optimizer else None)
    build = (functools.partial(method.build, cfg, num_classes, info=info)
             if method.uses_data_info else functools.partial(method.build, cfg, num_classes))
    task = SegmentationTask(build, method.forward,
                            loss.make(cfg), train, val, num_classes=num_classes,
                            batch_size=t.batch_size, crop=t.crop, seed=t.seed, flip=t.flip,
                            ignore_label=cfg.data.ignore_label, num_pictures=t.num_pictures,
                            eval_batch_size=t.eval_batch_size, make_optimizer=make_opt,
                            class_names=info.get("class_names"),
                            boundary_width=cfg.aaf.boundary_width)
    return task, method, info


def train_config(cfg, progress=True):
    from ppac_jax.train import OptimConfig, TrainConfig

    o = cfg.optim
    optim = OptimConfig(lr=o.lr, milestones=tuple(o.milestones), gamma=o.gamma,
                        weight_decay=o.weight_decay)
    t = cfg.train
    return TrainConfig(steps=t.steps, batch_size=t.batch_size, eval_every=t.eval_every,
                       checkpoint_every=t.checkpoint_every, log_every=t.log_every, optim=optim,
                       progress=progress)


def load_pretrained(trainer, path, cfg, method, num_classes, log=print):
    """Put weights from ``path`` into ``trainer``: a ppac-jax workdir, or an original weight
    file the method can read (PPAC: ``segmentation_refinement_pascal.pth``)."""
    from flax import nnx

    from ppac_jax.train import restore_params

    if not os.path.exists(path):
        raise FileNotFoundError(f"--pretrained: no such file or directory: {path}")
    if os.path.isdir(path):
        restore_params(trainer, path, log=log)
        return
    if method.load_original is None:
        raise ValueError(f"--pretrained {path}: method {cfg.method!r} reads only ppac-jax workdirs")
    model = method.load_original(path, cfg, num_classes)
    _, params, _ = nnx.split(model, nnx.Param, ...)
    trainer.set_params(params, mismatch=f"--pretrained {path}: the file's network does not match "
                       f"the configured one for {num_classes} classes (check "
                       f"model.depth_layers_* and data.num_classes)")
    log(f"loaded original weights from {path}")


def save_refined(task, trainer, workdir, log=print, write=True):
    """Refined validation labels as VOC palette PNGs in ``WORKDIR/refined``."""
    import numpy as np

    from ppac_jax.data import io

    out = os.path.join(workdir, "refined")
    if write:
        os.makedirs(out, exist_ok=True)
    names = ([s["name"] for s in task.val_data] if isinstance(task.val_data, list) else None)
    k = 0
    for _, refined in task.refine_all(trainer.predict):
        for r in refined:
            name = names[k].replace(os.sep, "_") if names else f"val_{k:05d}"
            if write:
                io.write_label_png(os.path.join(out, name + ".png"), np.argmax(r, -1))
            k += 1
    log(f"wrote {k} refined label maps to {out}")


def export_weights(trainer, workdir, log=print):
    """WORKDIR/export/refinement.pth: the best weights in the original's state-dict names."""
    from ppac_jax import convert

    path = os.path.join(workdir, "export", "refinement.pth")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    convert.save_torch_state_dict(convert.export_torch_weights(trainer.model()), path)
    log(f"exported the best weights to {path} (original state-dict names and layouts)")
    return path


def _summary(m, n_val, elapsed):
    boundary = ""
    if "boundary_miou" in m:
        boundary = (f"; boundary mIoU {100 * m['boundary_miou_input']:.2f} -> "
                    f"{100 * m['boundary_miou']:.2f}")
    return (f"baseline mIoU {100 * m['miou_input']:.2f} -> refined mIoU {100 * m['miou']:.2f} "
            f"({100 * m['miou_gain']:+.2f} points; pixel accuracy "
            f"{100 * m['pixel_accuracy_input']:.2f}% -> {100 * m['pixel_accuracy']:.2f}%"
            f"{boundary}) on {n_val} held-out images, {elapsed:.0f} s")


def train_and_evaluate(config, workdir: str, options=None, log=print) -> dict:
    """Train (or with ``options.evaluate_only`` evaluate) segmentation refinement in ``workdir``.

    Writes the data cache (``data/``), checkpoints (resumed when present), ``metrics.jsonl``,
    TensorBoard events, pictures, ``export/refinement.pth``, ``summary.json``; with
    ``options.extra["save_refined"]`` the refined labels as palette PNGs. Returns the summary.
    """
    import jax

    from ppac_jax.train import Trainer, cli
    from ppac_jax.train import train_and_evaluate as train_loop

    t0 = time.time()
    options, log, is_main = cli.start_run(config, workdir, options, log,
                                          describe=f"method {config.method}, loss {config.loss}")
    task, method, info = build_task(config, workdir, log, evaluate_only=options.evaluate_only)
    num_classes = info["num_classes"]
    n_val = len(task.val_data) if isinstance(task.val_data, list) else len(task.val_data["labels"])
    tcfg = train_config(config, progress=options.progress)
    trainer = Trainer(task, tcfg)
    load = functools.partial(load_pretrained, cfg=config, method=method,
                             num_classes=num_classes, log=log)
    if options.evaluate_only:
        load(trainer, options.pretrained or workdir)
        metrics = task.evaluate(trainer.predict, trainer.step, workdir)
    else:
        init = functools.partial(load, path=options.pretrained) if options.pretrained else None
        metrics = train_loop(task, tcfg, workdir, resume=not options.fresh, log=log,
                             init=(lambda tr: init(tr)) if init else None, trainer=trainer)
        if metrics.get("interrupted"):
            return metrics
        load(trainer, workdir)  # the best checkpoint
        if is_main and config.method == "segmenter":
            from experiments.train_segmentation.aaf import write_size_weights

            if config.loss == "aaf":
                metrics["size_weights"] = write_size_weights(
                    trainer.model(), workdir, info.get("class_names"), log)
        elif is_main:
            export_weights(trainer, workdir, log)
    if options.extra.get("save_refined"):
        save_refined(task, trainer, workdir, log, write=is_main)
    summary = dict(metrics, elapsed_s=time.time() - t0, preset=options.preset,
                   method=config.method, loss=config.loss, devices=jax.device_count(),
                   num_classes=num_classes, num_val_images=n_val)
    if "baseline_loss" in info:
        summary["baseline_train_loss"] = info["baseline_loss"]
    if is_main:
        with open(os.path.join(workdir, "summary.json"), "w", encoding="utf-8") as f:
            json.dump(summary, f, indent=1)
    log(_summary(metrics, n_val, time.time() - t0))
    return summary
