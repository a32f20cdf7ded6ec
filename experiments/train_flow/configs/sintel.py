"""HD3-layout MPI Sintel on disk (set data.train_list / val_list / estimates_root).

A starting point, not tuned here (no HD3 training data is shipped); reduce steps for CPU runs.
"""

from experiments.train_flow.configs import default


def get_config():
    config = default.get_config()
    config.data.dataset = "lists"
    config.train.update(steps=100_000, batch_size=8, crop=(256, 448), eval_every=5000,
                        checkpoint_every=1000, log_every=100, eval_batch_size=1)
    config.optim.update(lr=1e-4, branch_lr=1e-4, milestones=(50_000, 75_000))
    return config
