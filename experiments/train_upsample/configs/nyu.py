"""NYU Depth v2 from TensorFlow Datasets (``nyu_depth_v2`` prepared as array_record), the
original's recipe: depth x8, 256 crops, batch 1, Adam 1e-4, ``center`` low-res, eval border 6.

The original trains 5000 epochs of 1000 images (5M steps); set ``steps`` to what you can afford.
"""

from experiments.train_upsample.configs import default


def get_config():
    config = default.get_config()
    config.task = "depth"
    config.data.update(dataset="nyu", lowres_mode="center", eval_border=6)
    config.train.update(steps=1_000_000, batch_size=1, crop=256, eval_every=50_000,
                        checkpoint_every=5000, log_every=100, eval_batch_size=1)
    config.optim.update(lr=1e-4, milestones=(700_000, 900_000), gamma=0.1)
    return config
