"""PPAC flow refinement: the task's training code (data, model, pretrained weights, export).

``train_and_evaluate(config, workdir, options)`` is what ``python -m experiments.train_flow``
runs; the presets are in ``configs/`` and the command line in ``main.py``.
"""

from __future__ import annotations

import functools
import json
import os
import time

__all__ = ["build_task", "export_weights", "load_data", "load_pretrained", "make_model_factory",
           "save_refined", "train_and_evaluate", "train_config"]


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

    if cfg.data.dataset == "synthetic":
        cache = os.path.join(workdir, "data")
        d = cfg.data
        first = d.data_seed * 1_000_000
        train = datasets.synthetic_flow_dataset(range(first, first + d.num_train_scenes),
                                                height=d.height, width=d.width, cache_dir=cache,
                                                log=log)
        # held-out scenes: seeds disjoint from every training seed
        val_start = first + 900_000
        val = datasets.synthetic_flow_dataset(range(val_start, val_start + d.num_val_scenes),
                                              height=d.height, width=d.width, cache_dir=cache,
                                              log=log)
        return train, val
    if cfg.data.dataset == "tfds":  # the synthetic scenes, packed to array_record and read back
        from ppac_jax.data.tfds_builder import PpacFlow, PpacFlowConfig

        d = cfg.data
        name = f"synthetic_{d.height}x{d.width}_{d.num_train_scenes}_{d.num_val_scenes}"
        builder = PpacFlow(data_dir=d.tfds_data_dir or os.path.join(workdir, "tfds"),
                           config=PpacFlowConfig(name=name, height=d.height, width=d.width,
                                                 num_train=d.num_train_scenes,
                                                 num_validation=d.num_val_scenes))
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
    if cfg.data.dataset == "lists":
        for name in ("train_list", "val_list", "estimates_root"):
            if cfg.data[name] is None:
                raise ValueError(f"dataset=lists needs --set {name}=PATH")
        kw = dict(estimates_root=cfg.data.estimates_root, root=cfg.data.data_root,
                  missing_confidence=cfg.data.missing_confidence,
                  levels=cfg.model.depth_layers_prob[0])
        train = datasets.list_flow_dataset(cfg.data.train_list, **kw)
        val = datasets.list_flow_dataset(cfg.data.val_list, **kw)
        if any(s["confidence_source"] == "uniform" for s in train + val):
            log("note: some _prob.npy confidence files are missing; using confidence 1 there")
        return datasets.stack_samples(_crop_common(train)), val
    raise ValueError(f"config field dataset: expected 'synthetic', 'tfds' or 'lists', got "
                     f"{cfg.data.dataset!r}")


def make_model_factory(cfg):
    def make():
        from flax import nnx

        from ppac_jax.nn import PPacNet

        m = cfg.model
        return PPacNet(m.kernel_size_preprocessing, m.kernel_size_joint, m.conv_specification,
                       True, m.depth_layers_prob, m.depth_layers_guidance, m.depth_layers_joint,
                       rngs=nnx.Rngs(m.model_seed), impl=m.pac_impl)
    return make


def build_task(cfg, workdir, log=print):
    if len(cfg.train.crop) != 2:
        raise ValueError(f"config field train.crop: expected (height, width), got {cfg.train.crop}")
    from ppac_jax.train.flow import FlowRefinementTask

    train, val = load_data(cfg, workdir, log)
    levels = train["confidence"].shape[-1]
    if cfg.model.depth_layers_prob[0] != levels:
        raise ValueError(f"the data has {levels} confidence levels but depth_layers_prob[0] = "
                         f"{cfg.model.depth_layers_prob[0]}: set --set depth_layers_prob={levels},...")
    t = cfg.train
    return FlowRefinementTask(make_model_factory(cfg), train, val, batch_size=t.batch_size,
                              crop=t.crop, seed=t.seed, num_pictures=t.num_pictures,
                              eval_batch_size=t.eval_batch_size, flip=t.flip)


def train_config(cfg, progress=True):
    from ppac_jax.train import OptimConfig, TrainConfig
    from ppac_jax.train.flow import FlowRefinementTask

    o = cfg.optim
    groups = () if o.branch_lr is None else tuple(
        (name, o.branch_lr) for name in FlowRefinementTask.branch_names)
    optim = OptimConfig(lr=o.lr, group_lr=groups, milestones=o.milestones, gamma=o.gamma,
                        weight_decay=o.weight_decay)
    t = cfg.train
    return TrainConfig(steps=t.steps, batch_size=t.batch_size, eval_every=t.eval_every,
                       checkpoint_every=t.checkpoint_every, log_every=t.log_every, optim=optim,
                       progress=progress)


def load_pretrained(trainer, path, log=print, pac_impl="auto"):
    """Put weights from ``path`` into ``trainer`` (a ppac-jax workdir, or an original .pth)."""
    from flax import nnx

    from ppac_jax.train import restore_params

    if not os.path.exists(path):
        raise FileNotFoundError(f"--pretrained: no such file or directory: {path}")
    if not path.endswith(".pth"):
        restore_params(trainer, path, log=log)
        return
    from ppac_jax.convert import load_ppacnet

    model = load_ppacnet(path, impl=pac_impl)
    _, params, _ = nnx.split(model, nnx.Param, ...)
    trainer.set_params(params, mismatch=f"--pretrained {path}: the checkpoint's network does not "
                       "match the configured PPacNet (check depth_layers_* and conv_specification)")
    log(f"loaded original weights from {path}")


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




def train_and_evaluate(config, workdir: str, options=None, log=print) -> dict:
    """Train (or with ``options.evaluate_only`` evaluate) PPAC flow refinement in ``workdir``.

    Writes checkpoints (resumed when present), ``metrics.jsonl``, TensorBoard events, pictures,
    ``export/ppacnet.pth`` (best weights, original format), ``summary.json``; with
    ``options.extra["save_refined"]`` also the refined validation flows. Returns the summary.
    """
    import jax

    from ppac_jax.train import Trainer, cli
    from ppac_jax.train import train_and_evaluate as train_loop

    t0 = time.time()
    options, log, is_main = cli.start_run(config, workdir, options, log)
    task = build_task(config, workdir, log)
    n_val = len(task.val_data["flow"]) if isinstance(task.val_data, dict) else len(task.val_data)
    baseline = {}
    if isinstance(task.val_data, dict):
        from ppac_jax.data.baseline import confidence_report

        v = task.val_data
        baseline = confidence_report(v["estimate"], v["confidence"], v["flow"], v["valid"])
        log(f"input estimates on the {n_val} held-out images: AEE {baseline['aee']:.3f} (zero "
            f"flow {baseline['aee_zero_flow']:.3f}); confidence vs error correlation: Pearson "
            f"{baseline['pearson']:.2f}, Spearman {baseline['spearman']:.2f}")
    tcfg = train_config(config, progress=options.progress)
    pac_impl = config.model.pac_impl
    trainer = Trainer(task, tcfg)  # one set of compiled functions for training and saving
    if options.evaluate_only:
        load_pretrained(trainer, options.pretrained or workdir, log, pac_impl)
        metrics = task.evaluate(trainer.predict, trainer.step, workdir)
    else:
        init = (functools.partial(load_pretrained, path=options.pretrained, log=log,
                                  pac_impl=pac_impl) if options.pretrained else None)
        metrics = train_loop(task, tcfg, workdir, resume=not options.fresh, log=log, init=init,
                             trainer=trainer)
        if metrics.get("interrupted"):
            return metrics
        load_pretrained(trainer, workdir, log, pac_impl)  # the best checkpoint
        if is_main:
            export_weights(trainer, workdir, log)
    if options.extra.get("save_refined"):  # every process predicts (sharded); the main one writes
        save_refined(task, trainer, workdir, log, write=is_main)
    summary = dict(metrics, elapsed_s=time.time() - t0, preset=options.preset,
                   devices=jax.device_count(), **{f"input_{k}": v for k, v in baseline.items()})
    if is_main:
        with open(os.path.join(workdir, "summary.json"), "w", encoding="utf-8") as f:
            json.dump(summary, f, indent=1)
    log(_summary(metrics, n_val, time.time() - t0))
    return summary
