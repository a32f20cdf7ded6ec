"""The generic trainer with a model whose buffers change in a training step (BatchNorm running
statistics): carried from step to step, used by predict (evaluation mode), checkpointed."""

import jax.numpy as jnp
import numpy as np
from flax import nnx

from ppac_jax import nn

C = 3


def _running_stats(batches, momentum=0.1):
    """torch.nn.BatchNorm2d's running statistics after training calls on ``batches`` (NHWC)."""
    mean, var = np.zeros(C), np.ones(C)
    for x in batches:
        n = x.size // C
        mean = (1 - momentum) * mean + momentum * x.mean((0, 1, 2))
        var = (1 - momentum) * var + momentum * x.var((0, 1, 2)) * n / (n - 1)
    return {"running_mean": mean, "running_var": var}


class _BnTask:
    """BN first (its running statistics depend on the data only), then a conv."""

    pixels_per_example = 16
    best_metric = ("loss", "min")

    def __init__(self, batches):
        self.batches = batches

    def init_model(self):
        class Net(nnx.Module):
            def __init__(self):
                self.bn = nn.BatchNorm2d(C, param_dtype=jnp.float64)
                self.conv = nn.Conv2d(C, 1, 3, padding=1, param_dtype=jnp.float64)

            def __call__(self, x):
                return self.conv(self.bn(x))
        return Net()

    def train_batch(self, step):
        return {"x": self.batches[step]}

    def loss(self, model, batch):
        return jnp.mean(model(batch["x"]) ** 2), {}

    def predict(self, model, batch):
        return model(batch["x"])

    def evaluate(self, predict, step, workdir):
        return {}


def test_trainer_carries_running_statistics(tmp_path):
    from ppac_jax.train import Checkpointer, OptimConfig, TrainConfig, Trainer

    rng = np.random.default_rng(4)
    batches = [rng.normal(1.0, 2.0, (2, 4, 4, C)) for _ in range(2)]
    task = _BnTask(batches)
    trainer = Trainer(task, TrainConfig(steps=2, batch_size=2, optim=OptimConfig(lr=1e-2),
                                        progress=False))
    for s in range(2):
        trainer.train_step(task.train_batch(s))
    state = _running_stats(batches)
    stats = trainer.state["batch_stats"]["bn"]
    assert int(stats["num_batches_tracked"][...]) == 2
    for name in ("running_mean", "running_var"):
        np.testing.assert_allclose(np.asarray(stats[name][...]), state[name], rtol=1e-12)
    # predict runs in evaluation mode: the running statistics, no update
    x = rng.normal(size=(2, 4, 4, C))
    model = trainer.model()
    model.eval()
    np.testing.assert_allclose(trainer.predict({"x": x}), np.asarray(model(jnp.asarray(x))),
                               rtol=1e-12)
    assert int(trainer.state["batch_stats"]["bn"]["num_batches_tracked"][...]) == 2
    # ... and the checkpoints keep them
    ckpt = Checkpointer(str(tmp_path))
    ckpt.save(2, trainer.state)
    ckpt.wait()
    fresh = Trainer(task, TrainConfig(steps=2, batch_size=2, progress=False))
    restored = ckpt.restore(fresh.state)
    ckpt.close()
    np.testing.assert_allclose(np.asarray(restored["batch_stats"]["bn"]["running_var"][...]),
                               state["running_var"], rtol=1e-12)
