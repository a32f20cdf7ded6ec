"""Device mesh, batch sharding, optimiser and the functional training state of an NNX model.

Data parallelism with the current JAX API: one mesh axis ``"data"`` over every device of every
process; the batch is sharded along it and parameters/optimiser state are replicated (what
``pmap`` did). Multi-host works the same once ``jax.distributed.initialize()`` has run.
"""

from __future__ import annotations

import dataclasses

import jax
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

__all__ = ["OptimConfig", "make_mesh", "replicated", "batch_sharding", "shard_batch",
           "check_batch_size", "make_optimizer", "split_model"]


@dataclasses.dataclass(frozen=True)
class OptimConfig:
    """Adam with a multi-step schedule: ``lr * gamma**(number of milestones passed)``.

    ``group_lr`` holds ``(name, lr)`` pairs: parameters whose path passes through a module or
    attribute called ``name`` use that learning rate instead of ``lr`` (the task decides the
    groups, e.g. the guidance and probability branches of a refinement net).
    ``weight_decay`` is added to the gradient (L2, as in ``torch.optim.Adam``).
    """

    lr: float = 1e-3
    group_lr: tuple[tuple[str, float], ...] = ()
    milestones: tuple[int, ...] = ()
    gamma: float = 0.5
    weight_decay: float = 0.0
    # skip an update whose gradient has a NaN/Inf (PPAC's division by a confidence-weighted sum
    # can overflow in float32 when the confidences of a whole window collapse towards 0)
    skip_nonfinite: bool = True


def make_mesh(devices=None) -> Mesh:
    """A 1-D mesh named ``"data"`` over ``devices`` (default: every device of every process)."""
    devices = jax.devices() if devices is None else devices
    return Mesh(np.asarray(devices), ("data",))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def batch_sharding(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec("data"))


def check_batch_size(batch_size: int, mesh: Mesh, *, name: str = "batch_size") -> None:
    """Raise a ValueError saying how to fix a global batch not divisible by the device count."""
    n = mesh.devices.size
    if batch_size % n:
        lower = max(n, batch_size // n * n)
        raise ValueError(f"{name}={batch_size} is not divisible by the {n} devices in use: set "
                         f"{name} to a multiple of {n} (e.g. --set {name}={lower}) or limit the "
                         f"devices (e.g. CUDA_VISIBLE_DEVICES)")


def shard_batch(batch: dict, mesh: Mesh) -> dict:
    """Place a *global* numpy batch (identical on every process) sharded along axis 0.

    Each process contributes the rows belonging to its own devices, so this is correct for one
    process and for many.
    """
    sharding = batch_sharding(mesh)
    out = {}
    for k, v in batch.items():
        v = np.asarray(v)
        check_batch_size(v.shape[0], mesh)
        if jax.process_count() == 1:
            out[k] = jax.device_put(v, sharding)
        else:
            idx = sharding.addressable_devices_indices_map(v.shape)
            arrays = [jax.device_put(v[i], d) for d, i in idx.items()]
            out[k] = jax.make_array_from_single_device_arrays(v.shape, sharding, arrays)
    return out


def make_optimizer(config: OptimConfig, params) -> optax.GradientTransformation:
    """Optax Adam for ``params`` (an nnx.State / pytree) following ``config``."""

    def schedule(lr):
        if not config.milestones:
            return lr
        return optax.piecewise_constant_schedule(
            lr, {int(m): config.gamma for m in config.milestones})

    def adam(lr):
        parts = []
        if config.weight_decay:
            parts.append(optax.add_decayed_weights(config.weight_decay))
        parts.append(optax.adam(schedule(lr)))
        return optax.chain(*parts)

    groups = {name: lr for name, lr in config.group_lr if lr != config.lr}

    def label(path, _):
        names = [str(getattr(p, "key", getattr(p, "name", getattr(p, "idx", p)))) for p in path]
        return next((n for n in names if n in groups), "main")

    if not groups:
        tx = adam(config.lr)
    else:
        labels = jax.tree_util.tree_map_with_path(label, params)
        tx = optax.multi_transform({"main": adam(config.lr),
                                    **{name: adam(lr) for name, lr in groups.items()}}, labels)
    if config.skip_nonfinite:
        tx = optax.apply_if_finite(tx, max_consecutive_errors=100)
    return tx



def split_model(model: nnx.Module):
    """``(graphdef, params, rest)``: trainable ``nnx.Param`` leaves and everything else."""
    return nnx.split(model, nnx.Param, ...)
