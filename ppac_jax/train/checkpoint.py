"""Orbax checkpoints of a training state: the latest (for resuming) and the best by a metric."""

from __future__ import annotations

import os

import jax
import orbax.checkpoint as ocp

__all__ = ["Checkpointer", "restore_params"]


def _flat(tree):
    leaves = jax.tree_util.tree_leaves(tree)
    return {f"{i:05d}": leaf for i, leaf in enumerate(leaves)}


class Checkpointer:
    """``<workdir>/checkpoints`` keeps the latest state, ``<workdir>/best`` the best by ``metric``.

    States are arbitrary pytrees (NNX states, Optax states); they are stored as their flat list of
    leaves and restored into the structure (and shardings) of a freshly initialised state, so the
    file format does not depend on pytree node classes. Saves are synchronous: the states are
    small, and two managers saving asynchronously in several processes at once could time out
    waiting on each other's barriers.
    """

    def __init__(self, workdir: str, *, metric: str = "loss", mode: str = "min"):
        self.workdir = os.path.abspath(workdir)
        self.metric = metric
        self.latest = ocp.CheckpointManager(
            os.path.join(self.workdir, "checkpoints"),
            options=ocp.CheckpointManagerOptions(max_to_keep=1, create=True,
                                                 enable_async_checkpointing=False))
        self.best = ocp.CheckpointManager(
            os.path.join(self.workdir, "best"),
            options=ocp.CheckpointManagerOptions(
                max_to_keep=1, create=True, best_fn=lambda m: m[metric], best_mode=mode,
                enable_async_checkpointing=False))

    def latest_step(self):
        return self.latest.latest_step()

    def save(self, step: int, state, *, metrics: dict | None = None, force: bool = False) -> None:
        """Save as latest; with ``metrics`` also offer it to the best-checkpoint manager."""
        if self.latest.latest_step() != step:
            self.latest.save(step, args=ocp.args.StandardSave(_flat(state)), force=force)
        if metrics is not None and self.metric in metrics:
            self.best.save(step, args=ocp.args.StandardSave(_flat(state)),
                           metrics={k: float(v) for k, v in metrics.items()}, force=True)

    def restore(self, state, *, step: int | None = None, best: bool = False):
        """Restore into the structure/shardings of ``state``; returns the restored state."""
        manager = self.best if best else self.latest
        step = manager.best_step() if best else (manager.latest_step() if step is None else step)
        if step is None:
            raise FileNotFoundError(f"no checkpoint in {manager.directory}")
        leaves, treedef = jax.tree_util.tree_flatten(state)
        target = {f"{i:05d}": ocp.utils.to_shape_dtype_struct(leaf)
                  for i, leaf in enumerate(leaves)}
        restored = manager.restore(step, args=ocp.args.StandardRestore(target))
        return jax.tree_util.tree_unflatten(treedef, [restored[k] for k in sorted(restored)])

    def wait(self) -> None:
        self.latest.wait_until_finished()
        self.best.wait_until_finished()

    def close(self) -> None:
        self.latest.close()
        self.best.close()


def restore_params(trainer, path: str, *, log=print) -> str:
    """Load the parameters of a ppac-jax workdir into ``trainer`` (its best, else latest, step).

    ``trainer`` is a :class:`ppac_jax.train.Trainer`; its task's ``best_metric`` names the best
    checkpoint. Returns ``"best"`` or ``"latest"``.

    Raises:
      FileNotFoundError: ``path`` has neither ``best/`` nor ``checkpoints/`` with a checkpoint.
    """
    for sub in ("best", "checkpoints"):
        folder = os.path.join(path, sub)
        if os.path.isdir(folder) and os.listdir(folder):
            metric, mode = trainer.task.best_metric
            ck = Checkpointer(path, metric=metric, mode=mode)
            which = "best" if sub == "best" else "latest"
            state = ck.restore(trainer.state, best=which == "best")
            ck.close()
            trainer.state = dict(trainer.state, params=state["params"],
                                 batch_stats=state["batch_stats"])
            log(f"loaded {which} ppac-jax checkpoint from {path}")
            return which
    raise FileNotFoundError(f"--pretrained {path}: neither an original weights file nor a "
                            "workdir with checkpoints/ or best/")
