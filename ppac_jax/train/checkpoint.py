"""Orbax checkpoints of a training state: the latest (for resuming) and the best by a metric."""

from __future__ import annotations

import os

import jax
import orbax.checkpoint as ocp

__all__ = ["Checkpointer"]


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

    def __init__(self, workdir: str, *, metric: str = "aee", mode: str = "min"):
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
