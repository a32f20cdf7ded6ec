"""A generic data-parallel training loop for NNX models.

The task (flow refinement, segmentation, upsampling, ...) supplies the model, a *global* batch
for every step (a pure function of the step, so a resumed run sees the same batches), the loss
and an evaluation; the loop supplies the mesh, the jitted sharded step, Optax, Orbax
checkpoints (latest + best, automatic resume, clean save on SIGTERM/Ctrl-C), the progress bar
and the metric files.
"""

from __future__ import annotations

import dataclasses
import signal
import threading
import time
from typing import Any, Callable, Protocol

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from tqdm import tqdm

from ppac_jax.nn.norm import BatchStat
from ppac_jax.train.checkpoint import Checkpointer
from ppac_jax.train.state import (OptimConfig, check_batch_size, make_mesh, make_optimizer,
                                  replicated, shard_batch)
from ppac_jax.train.writer import MetricWriter

__all__ = ["TrainConfig", "Task", "Trainer", "train_and_evaluate"]


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Loop settings. ``batch_size`` is global (over all devices and processes)."""

    steps: int = 1000
    batch_size: int = 8
    eval_every: int = 250
    checkpoint_every: int = 250
    log_every: int = 10
    optim: OptimConfig = OptimConfig()
    progress: bool = True


class Task(Protocol):
    """What a task gives the loop. ``best_metric`` = (evaluation key, "min" or "max") picks the
    best checkpoint. Optionally ``make_optimizer(params) -> optax.GradientTransformation``
    replaces the Adam of ``TrainConfig.optim`` (e.g. parameter groups, gradient ascent)."""

    pixels_per_example: int
    best_metric: tuple[str, str]

    def init_model(self) -> nnx.Module: ...

    def train_batch(self, step: int) -> dict: ...

    def loss(self, model: nnx.Module, batch: dict) -> tuple[jax.Array, dict]: ...

    def predict(self, model: nnx.Module, batch: dict) -> Any: ...

    def evaluate(self, predict: Callable[[dict], Any], step: int, workdir: str) -> dict: ...


class _StopFlag:
    """SIGTERM / SIGINT set a flag; the loop saves and stops at the end of the current step."""

    def __init__(self):
        self.requested = None
        self._previous = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.requested is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # second Ctrl-C: stop right now
        self.requested = signal.Signals(signum).name

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


class Trainer:
    """Holds the mesh, the model split into (graphdef, state) and the jitted functions.

    ``state`` holds ``params`` (the ``nnx.Param`` leaves, optimised), ``batch_stats`` (the
    :class:`ppac_jax.nn.BatchStat` buffers, i.e. BatchNorm running statistics: each training
    step returns the values its forward pass wrote, so they carry over to the next step and
    into the checkpoints), ``opt_state`` and ``step``; every other variable (fixed buffers,
    RNG state) is ``rest``, constant. ``train_step`` runs the model in the mode the task built
    it in; ``predict`` in evaluation mode (``model.eval()``: running statistics, no dropout).
    """

    def __init__(self, task: Task, config: TrainConfig, *, mesh=None):
        self.task = task
        self.config = config
        self.mesh = make_mesh() if mesh is None else mesh
        check_batch_size(config.batch_size, self.mesh)
        model = task.init_model()
        self.graphdef, params, batch_stats, self.rest = nnx.split(model, nnx.Param, BatchStat,
                                                                  ...)
        # Predictions run the model in evaluation mode (BatchNorm on its running statistics,
        # no dropout); training runs it in the mode the task built it in.
        evaluation = nnx.clone(model)
        evaluation.eval()
        self.eval_graphdef = nnx.graphdef(evaluation)
        custom = getattr(task, "make_optimizer", None)
        self.tx = custom(params) if custom is not None else make_optimizer(config.optim, params)
        # batch_stats (BatchNorm running statistics, updated by every training step and saved
        # with the checkpoints) is an empty State without leaves for models without BatchNorm.
        state = {"params": params, "batch_stats": batch_stats, "opt_state": self.tx.init(params),
                 "step": jnp.zeros((), jnp.int32)}
        rep = replicated(self.mesh)
        self.state = jax.device_put(state, rep)
        self.rest = jax.device_put(self.rest, rep)
        self._train_step = jax.jit(self._step, out_shardings=(rep, rep), donate_argnums=0)
        self._predict = jax.jit(self._predict_fn, out_shardings=rep)

    def model(self, params=None) -> nnx.Module:
        """The trained model (training mode; ``.eval()`` it for predictions)."""
        return nnx.merge(self.graphdef, self.state["params"] if params is None else params,
                         self.state["batch_stats"], self.rest)

    def set_params(self, params, *, mismatch: str) -> None:
        """Replace the trainable parameters (e.g. weights read from an original checkpoint).

        Raises:
          ValueError: ``mismatch``, when ``params`` differ from the model's in structure or shape.
        """
        ours = self.state["params"]
        leaves, own = jax.tree_util.tree_leaves(params), jax.tree_util.tree_leaves(ours)
        if (jax.tree_util.tree_structure(params) != jax.tree_util.tree_structure(ours)
                or any(a.shape != b.shape for a, b in zip(leaves, own))):
            raise ValueError(mismatch)
        self.state = dict(self.state, params=jax.device_put(params, replicated(self.mesh)))

    def _step(self, state, rest, batch):
        def loss_fn(params):
            model = nnx.merge(self.graphdef, params, state["batch_stats"], rest, copy=True)
            loss, aux = self.task.loss(model, batch)
            return loss, (aux, nnx.state(model, BatchStat))

        (loss, (aux, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            state["params"])
        updates, opt_state = self.tx.update(grads, state["opt_state"], state["params"])
        params = jax.tree_util.tree_map(lambda p, u: p + u, state["params"], updates)
        grad_norm = jnp.sqrt(sum(jnp.sum(g * g) for g in jax.tree_util.tree_leaves(grads)))
        metrics = {"loss": loss, "grad_norm": grad_norm, **aux,
                   "skipped": (~jnp.isfinite(grad_norm)).astype(jnp.float32)}
        return {"params": params, "batch_stats": batch_stats, "opt_state": opt_state,
                "step": state["step"] + 1}, metrics

    def _predict_fn(self, params, batch_stats, rest, batch):
        return self.task.predict(nnx.merge(self.eval_graphdef, params, batch_stats, rest), batch)

    def train_step(self, batch: dict) -> dict:
        """One optimiser step on a global numpy batch; returns metrics (device arrays)."""
        self.state, metrics = self._train_step(self.state, self.rest,
                                               shard_batch(batch, self.mesh))
        return metrics

    def predict(self, batch: dict):
        """Model outputs for a numpy batch of any size (padded to the device count), as numpy."""
        n = len(next(iter(batch.values())))
        k = self.mesh.devices.size
        pad = (-n) % k
        if pad:
            batch = {key: np.concatenate([v, np.repeat(v[-1:], pad, 0)]) for key, v in batch.items()}
        out = self._predict(self.state["params"], self.state["batch_stats"], self.rest,
                            shard_batch(batch, self.mesh))
        return jax.tree_util.tree_map(lambda x: np.asarray(x)[:n], out)

    @property
    def step(self) -> int:
        return int(self.state["step"])


def train_and_evaluate(task: Task, config: TrainConfig, workdir: str, *, resume: bool = True,
                       log: Callable[[str], None] = print,
                       init: Callable[[Trainer], None] | None = None,
                       trainer: Trainer | None = None) -> dict:
    """Train ``task`` for ``config.steps`` steps in ``workdir``; returns the last evaluation.

    Resumes from ``workdir/checkpoints`` when it holds a checkpoint (and ``resume``). Evaluates
    every ``eval_every`` steps and at the end, keeping the best checkpoint by the task's
    ``best_metric``.
    ``init(trainer)`` (e.g. loading pretrained weights) runs when not resuming. Pass your own
    ``trainer`` (built from the same task and config) to inspect its state afterwards.
    """
    trainer = Trainer(task, config) if trainer is None else trainer
    metric, mode = task.best_metric
    ckpt = Checkpointer(workdir, metric=metric, mode=mode)
    writer = MetricWriter(workdir)
    is_main = jax.process_index() == 0
    if resume and ckpt.latest_step() is not None:
        trainer.state = ckpt.restore(trainer.state)
        log(f"resuming from step {trainer.step}")
    elif init is not None:
        init(trainer)
    start = trainer.step
    last_eval = {}
    if start >= config.steps:
        log(f"already trained for {start} >= {config.steps} steps; evaluating")
        last_eval = task.evaluate(trainer.predict, start, workdir)
        writer.write(start, last_eval, prefix="eval/")
        writer.close()
        ckpt.close()
        return last_eval
    bar = tqdm(total=config.steps, initial=start, disable=not (config.progress and is_main),
               desc="train", unit="step", dynamic_ncols=True)
    window_t, window_n = time.perf_counter(), 0
    px_per_s = float("nan")
    with _StopFlag() as stop:
        for s in range(start, config.steps):
            metrics = trainer.train_step(task.train_batch(s))
            done = s + 1
            window_n += 1
            bar.update(1)
            if done % config.log_every == 0 or done == config.steps:
                metrics = {k: float(v) for k, v in metrics.items()}  # syncs the device
                elapsed = time.perf_counter() - window_t
                px_per_s = window_n * config.batch_size * task.pixels_per_example / elapsed
                window_t, window_n = time.perf_counter(), 0
                bar.set_postfix(loss=f"{metrics['loss']:.4f}", px_s=f"{px_per_s:.3g}")
                writer.write(done, {**metrics, "pixels_per_second": px_per_s},
                             prefix="train/")
            pause = time.perf_counter()  # evaluation/saving time is not training throughput
            if done % config.eval_every == 0 or done == config.steps:
                last_eval = task.evaluate(trainer.predict, done, workdir)
                writer.write(done, last_eval, prefix="eval/")
                bar.write(f"step {done}: " + ", ".join(f"{k} {v:.4f}" for k, v in last_eval.items()))
                ckpt.save(done, trainer.state, metrics=last_eval)
            elif done % config.checkpoint_every == 0:
                ckpt.save(done, trainer.state)
            window_t += time.perf_counter() - pause
            if stop.requested:
                ckpt.save(done, trainer.state, force=True)
                ckpt.wait()
                bar.close()
                log(f"{stop.requested}: saved step {done} to {ckpt.workdir}/checkpoints; "
                    f"re-run the same command to resume")
                break
    bar.close()
    ckpt.wait()
    ckpt.close()
    writer.close()
    last_eval = dict(last_eval)
    last_eval["pixels_per_second"] = px_per_s
    last_eval["step"] = trainer.step
    last_eval["interrupted"] = bool(stop.requested)
    return last_eval
