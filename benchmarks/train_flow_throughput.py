"""Training throughput of PPacNet flow refinement (pixels per second), on every device.

    python -m benchmarks.train_flow_throughput [--batch_size 8] [--crop 48 48] [--steps 10]

Prints one table row per crop size: compile time, seconds per step and training pixels/s for
the global batch sharded over all devices (the same jitted step as experiments.train_flow).
Random inputs are used: throughput does not depend on the data.
"""

import argparse
import time

import numpy as np


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("--batch_size", type=int, default=8)
    p.add_argument("--crop", type=int, nargs=2, action="append", default=None)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--pac_impl", default="patches")
    a = p.parse_args(argv)
    crops = a.crop or [(48, 48), (96, 128)]

    import jax

    from experiments.train_flow.configs import default
    from experiments.train_flow.train import make_model_factory, train_config
    from ppac_jax.train import Trainer
    from ppac_jax.train.flow import FlowRefinementTask

    print(f"{jax.device_count()} x {jax.devices()[0].platform} device(s); global batch {a.batch_size}")
    print(f"{'crop':>10} {'compile s':>10} {'s/step':>8} {'pixels/s':>10}")
    for h, w in crops:
        cfg = default.get_config()
        cfg.model.pac_impl, cfg.train.batch_size = a.pac_impl, a.batch_size
        rng = np.random.default_rng(0)
        n = 4
        data = {"image1": rng.uniform(size=(n, h, w, 3)).astype(np.float32),
                "flow": rng.normal(size=(n, h, w, 2)).astype(np.float32),
                "valid": np.ones((n, h, w), bool),
                "estimate": rng.normal(size=(n, h, w, 2)).astype(np.float32),
                "confidence": rng.uniform(size=(n, h, w, 5)).astype(np.float32)}
        task = FlowRefinementTask(make_model_factory(cfg), data, data, batch_size=a.batch_size,
                                  crop=(h, w))
        trainer = Trainer(task, train_config(cfg, progress=False))
        batch = task.train_batch(0)
        t0 = time.perf_counter()
        jax.block_until_ready(trainer.train_step(batch))
        compile_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        for s in range(a.steps):
            m = trainer.train_step(task.train_batch(s + 1))
        jax.block_until_ready(m)
        step_s = (time.perf_counter() - t0) / a.steps
        print(f"{h:>4}x{w:<5} {compile_s:>10.1f} {step_s:>8.3f} {a.batch_size * h * w / step_s:>10.0f}")


if __name__ == "__main__":
    main()
