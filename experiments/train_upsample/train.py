"""Joint upsampling: the task's training code (data, model, pretrained weights, export).

``train_and_evaluate(config, workdir, options)`` is what ``python -m experiments.train_upsample``
runs; the presets are in ``configs/`` and the command line in ``main.py``.
"""

from __future__ import annotations

import functools
import json
import os
import time

__all__ = ["build_task", "export_weights", "load_data", "load_pretrained", "make_model_factory",
           "train_and_evaluate", "train_config"]


def _defaults(cfg):
    """(lowres_mode, eval_border) of the config, or the original's per-task defaults."""
    depth = cfg.task == "depth"
    mode = cfg.data.lowres_mode or ("center" if depth else "bilinear")
    border = cfg.data.eval_border if cfg.data.eval_border is not None else (6 if depth else 0)
    return mode, border


def load_data(cfg, workdir, log=print):
    """(train source, validation source): random-access record lists."""
    from ppac_jax.data import upsampling_sources as src

    d = cfg.data
    if cfg.task not in ("depth", "flow"):
        raise ValueError(f"config field task: expected 'depth' or 'flow', got {cfg.task!r}")
    if d.dataset == "synthetic":
        first = d.data_seed * 1_000_000
        log(f"generating {d.num_train_scenes} + {d.num_val_scenes} built-in scenes of "
            f"{d.height}x{d.width} ({cfg.task})")
        train = src.synthetic_source(range(first, first + d.num_train_scenes), height=d.height,
                                     width=d.width, task=cfg.task)
        val_start = first + 900_000  # held-out seeds, disjoint from every training seed
        val = src.synthetic_source(range(val_start, val_start + d.num_val_scenes),
                                   height=d.height, width=d.width, task=cfg.task)
    elif d.dataset == "nyu":
        if cfg.task != "depth":
            raise ValueError("dataset=nyu is a depth data set: --set task=depth")
        train = src.nyu_tfds_source("train", data_dir=d.tfds_data_dir)
        val = src.nyu_tfds_source("validation", data_dir=d.tfds_data_dir)
    elif d.dataset == "sintel":
        if cfg.task != "flow":
            raise ValueError("dataset=sintel is a flow data set: --set task=flow")
        for name in ("sintel_root", "split_file"):
            if d[name] is None:
                raise ValueError(f"dataset=sintel needs --set {name}=PATH")
        train = src.sintel_source(d.sintel_root, d.split_file, "train", render_pass=d.render_pass)
        val = src.sintel_source(d.sintel_root, d.split_file, "val", render_pass=d.render_pass)
    else:
        raise ValueError(f"config field dataset: expected 'synthetic', 'nyu' or 'sintel', got "
                         f"{d.dataset!r}")
    if d.max_val_images and len(val) > d.max_val_images:
        val = src.RecordList(d.max_val_images, val.__getitem__)
    return train, val


def make_model_factory(cfg):
    def make():
        from flax import nnx

        from ppac_jax.nn.upsample import create_model

        m = cfg.model
        return create_model(m.model, m.factor, rngs=nnx.Rngs(m.model_seed))
    return make


def _index_order(cfg, n):
    """grain's deterministic shuffled order over ``n`` records (``None`` without grain)."""
    try:
        import grain.python as grain
    except ImportError:
        return None
    sampler = grain.IndexSampler(num_records=n, shuffle=True, seed=cfg.train.seed,
                                 num_epochs=None, shard_options=grain.NoSharding())

    def order(step, batch_size):
        return [sampler[step * batch_size + i].record_key for i in range(batch_size)]
    return order


def build_task(cfg, workdir, log=print):
    from ppac_jax.train.upsample import JointUpsamplingTask

    t = cfg.train
    if t.crop % cfg.model.factor:
        raise ValueError(f"config field train.crop: {t.crop} must be a multiple of factor "
                         f"{cfg.model.factor}")
    train, val = load_data(cfg, workdir, log)
    mode, border = _defaults(cfg)
    return JointUpsamplingTask(make_model_factory(cfg), train, val, factor=cfg.model.factor,
                               task=cfg.task, batch_size=t.batch_size, crop=t.crop, loss=t.loss,
                               lowres_mode=mode, eval_border=border, seed=t.seed, flip=t.flip,
                               num_pictures=t.num_pictures, eval_batch_size=t.eval_batch_size,
                               index_order=_index_order(cfg, len(train)))


def train_config(cfg, progress=True):
    from ppac_jax.train import OptimConfig, TrainConfig

    o = cfg.optim
    optim = OptimConfig(lr=o.lr, milestones=o.milestones, gamma=o.gamma,
                        weight_decay=o.weight_decay)
    t = cfg.train
    return TrainConfig(steps=t.steps, batch_size=t.batch_size, eval_every=t.eval_every,
                       checkpoint_every=t.checkpoint_every, log_every=t.log_every, optim=optim,
                       progress=progress)


def load_pretrained(trainer, path, log=print):
    """Put weights from ``path`` into ``trainer`` (a ppac-jax workdir, or an original .pth
    state dict of the configured model)."""
    from flax import nnx

    from ppac_jax import convert
    from ppac_jax.train import restore_params

    if not os.path.exists(path):
        raise FileNotFoundError(f"--pretrained: no such file or directory: {path}")
    if not path.endswith(".pth"):
        restore_params(trainer, path, log=log)
        return
    model = trainer.model()
    try:
        convert.load_torch_weights(model, path, prefix=_prefix(convert.read_state_dict(path)))
    except KeyError as e:
        raise ValueError(f"--pretrained {path}: the checkpoint does not match the configured "
                         f"model ({e})") from None
    _, params, _ = nnx.split(model, nnx.Param, ...)
    trainer.set_params(params, mismatch=f"--pretrained {path}: the checkpoint does not match the "
                       "configured model")
    log(f"loaded original weights from {path}")


def _prefix(state_dict):
    """``module.`` of DataParallel checkpoints."""
    return "module." if state_dict and all(k.startswith("module.") for k in state_dict) else ""


def export_weights(trainer, workdir, name, log=print):
    """Write the trainer's weights as WORKDIR/export/<name>.pth in the original's format."""
    from ppac_jax import convert

    weights = convert.export_torch_weights(trainer.model())
    if not weights:
        return None
    path = os.path.join(workdir, "export", f"{name}.pth")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    convert.save_torch_state_dict(weights, path)
    log(f"exported the best weights to {path} (original state-dict names and layouts)")
    return path


def _summary(metrics, cfg, n_val, elapsed):
    name = "RMSE" if cfg.task == "depth" else "EPE"
    key = name.lower()
    return (f"{cfg.model.model} x{cfg.model.factor} {cfg.task}: held-out {name} "
            f"{metrics[key]:.4f} vs bilinear {metrics[key + '_bilinear']:.4f} "
            f"({100 * metrics['improvement']:.1f}% lower) on {n_val} images, {elapsed:.0f} s")


def train_and_evaluate(config, workdir: str, options=None, log=print) -> dict:
    """Train (or with ``options.evaluate_only`` evaluate) a joint-upsampling network in
    ``workdir``.

    Writes checkpoints (resumed when present), ``metrics.jsonl``, TensorBoard events, picture
    panels, ``export/<model>.pth`` (best weights, original format) and ``summary.json``.
    Returns the summary.
    """
    import jax

    from ppac_jax.train import Trainer, cli
    from ppac_jax.train import train_and_evaluate as train_loop

    t0 = time.time()
    options, log, is_main = cli.start_run(config, workdir, options, log)
    task = build_task(config, workdir, log)
    tcfg = train_config(config, progress=options.progress)
    trainer = Trainer(task, tcfg)
    n_params = sum(int(x.size) for x in jax.tree_util.tree_leaves(trainer.state["params"]))
    log(f"{config.model.model} x{config.model.factor}: {n_params} parameters")
    if options.evaluate_only or n_params == 0:
        if options.evaluate_only and (options.pretrained or os.path.isdir(
                os.path.join(workdir, "checkpoints"))):
            load_pretrained(trainer, options.pretrained or workdir, log)
        metrics = task.evaluate(trainer.predict, trainer.step, workdir)
    else:
        init = (functools.partial(load_pretrained, path=options.pretrained, log=log)
                if options.pretrained else None)
        metrics = train_loop(task, tcfg, workdir, resume=not options.fresh, log=log, init=init,
                             trainer=trainer)
        if metrics.get("interrupted"):
            return metrics
        load_pretrained(trainer, workdir, log)  # the best checkpoint
        if is_main:
            export_weights(trainer, workdir, config.model.model, log)
    summary = dict(metrics, elapsed_s=time.time() - t0, preset=options.preset,
                   devices=jax.device_count(), parameters=n_params, model=config.model.model,
                   factor=config.model.factor, task=config.task)
    if is_main:
        with open(os.path.join(workdir, "summary.json"), "w", encoding="utf-8") as f:
            json.dump(summary, f, indent=1)
    log(_summary(metrics, config, len(task.val_source), time.time() - t0))
    return summary
