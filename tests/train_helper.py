"""Run a tiny flow-refinement training in a subprocess (used by tests/train/test_train_distributed.py).

    python -m tests.train_helper --data D.npz --workdir W --steps 6 --out params.npz
"""

import argparse
import json
import sys
import time


def make_task(data, steps, *, step_sleep=0.0, hook=None):
    """(task, TrainConfig) of a tiny refinement net on stacked scenes (last 2 = validation)."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from ppac_jax.train import OptimConfig, TrainConfig
    from ppac_jax.train.flow import FlowRefinementTask

    class TinyRefiner(nnx.Module):
        def __init__(self, levels, rngs):
            self.network_guidance = nnx.Conv(3, 4, (3, 3), rngs=rngs)
            self.layers_joint = nnx.Conv(2 + levels + 4, 2, (3, 3), rngs=rngs)

        def __call__(self, estimate, log_probabilities, images):
            g = jax.nn.relu(self.network_guidance(images))
            x = jnp.concatenate([estimate, log_probabilities * 0.1, g], -1)
            return estimate + self.layers_joint(x)

    train = {k: v[:-2] for k, v in data.items()}
    val = {k: v[-2:] for k, v in data.items()}
    levels = data["confidence"].shape[-1]

    class SlowTask(FlowRefinementTask):
        def train_batch(self, step):
            time.sleep(step_sleep)
            if hook is not None:
                hook(step)
            return super().train_batch(step)

    task = SlowTask(lambda: TinyRefiner(levels, nnx.Rngs(0)), train, val, batch_size=8,
                    crop=(16, 16), seed=1, num_pictures=1)
    cfg = TrainConfig(steps=steps, batch_size=8, eval_every=4, checkpoint_every=1, log_every=1,
                      optim=OptimConfig(lr=1e-2, group_lr=(("network_guidance", 5e-3),),
                                        milestones=(2,), gamma=0.5),
                      progress=False)
    return task, cfg


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("--data", required=True)
    p.add_argument("--workdir", required=True)
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--out", default=None)
    p.add_argument("--step_sleep", type=float, default=0.0)
    p.add_argument("--coordinator", default=None)
    p.add_argument("--num_processes", type=int, default=None)
    p.add_argument("--process_id", type=int, default=None)
    a = p.parse_args(argv)

    import jax

    if a.coordinator:
        jax.distributed.initialize(coordinator_address=a.coordinator,
                                   num_processes=a.num_processes, process_id=a.process_id)
    import numpy as np

    from ppac_jax.train import Trainer, train_and_evaluate

    with np.load(a.data) as f:
        data = {k: f[k] for k in f.files}
    task, cfg = make_task(data, a.steps, step_sleep=a.step_sleep)
    trainer = Trainer(task, cfg)
    result = train_and_evaluate(task, cfg, a.workdir, trainer=trainer)
    if a.out and jax.process_index() == 0:
        leaves = jax.tree_util.tree_leaves(trainer.state["params"])
        np.savez(a.out, *[np.asarray(x.addressable_data(0)) for x in leaves])
        with open(a.out + ".json", "w") as f:
            json.dump({k: v for k, v in result.items() if isinstance(v, (int, float, bool))}, f)
    return 0


if __name__ == "__main__":
    sys.exit(main())
