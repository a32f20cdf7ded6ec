"""Run a tiny joint-upsampling training in a subprocess (used by tests/experiments/test_train_upsample.py).

    python -m tests.train_upsample_helper --workdir W --steps 4 --out params.npz

The smoke preset of experiments.train_upsample with a narrow PacJointUpsample (fast compiles).
"""

import argparse
import sys
import time


def make_task(steps, *, step_sleep=0.0):
    from flax import nnx

    from experiments.train_upsample import train
    from ppac_jax.nn import PacJointUpsample
    from ppac_jax.train import cli

    config = cli.load_config("experiments.train_upsample.configs", "smoke")
    config.train.update(steps=steps, checkpoint_every=1, eval_every=steps, log_every=1)
    config.optim.milestones = (2,)
    task = train.build_task(config, "", log=lambda *a: None)
    task.make_model = lambda: PacJointUpsample(4, n_t_filters=4, n_g_filters=4, n_f_filters=4,
                                               k_ch=2, rngs=nnx.Rngs(0))
    plain = task.train_batch

    def slow(step):
        time.sleep(step_sleep)
        return plain(step)
    task.train_batch = slow
    return task, train.train_config(config, progress=False)


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("--workdir", required=True)
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--out", default=None)
    p.add_argument("--step_sleep", type=float, default=0.0)
    a = p.parse_args(argv)

    import jax
    import numpy as np

    from ppac_jax.train import Trainer, train_and_evaluate

    task, cfg = make_task(a.steps, step_sleep=a.step_sleep)
    trainer = Trainer(task, cfg)
    train_and_evaluate(task, cfg, a.workdir, trainer=trainer)
    if a.out:
        leaves = jax.tree_util.tree_leaves(trainer.state["params"])
        np.savez(a.out, *[np.asarray(x.addressable_data(0)) for x in leaves])
    return 0


if __name__ == "__main__":
    sys.exit(main())
