"""MPI Sintel flow (folder layout + the original's split file), the original's recipe: flow x8,
256 crops, batch 1, Adam 1e-4, ``bilinear`` low-res, EPE.

Set ``sintel_root`` and ``split_file``; the original trains 5000 epochs of 908 frames.
"""

from experiments.train_upsample.configs import default


def get_config():
    config = default.get_config()
    config.task = "flow"
    config.data.update(dataset="sintel", lowres_mode="bilinear", eval_border=0)
    config.train.update(steps=1_000_000, batch_size=1, crop=256, eval_every=50_000,
                        checkpoint_every=5000, log_every=100, eval_batch_size=1)
    config.optim.update(lr=1e-4, milestones=(700_000, 900_000), gamma=0.1)
    return config
