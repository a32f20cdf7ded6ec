"""Seconds: tiny scenes and a few steps, for tests."""

from experiments.train_flow.configs import default


def get_config():
    config = default.get_config()
    config.data.update(height=32, width=48, num_train_scenes=16, num_val_scenes=4)
    config.train.update(steps=6, batch_size=8, crop=(32, 32), eval_every=3, checkpoint_every=2,
                        log_every=1, num_pictures=2)
    config.optim.milestones = (4,)
    return config
