"""Seconds: tiny scenes, the narrow network and a few steps, for tests."""

from experiments.train_upsample.configs import default


def get_config():
    config = default.get_config()
    config.data.update(height=32, width=48, num_train_scenes=8, num_val_scenes=4)
    config.model.update(model="PacJointUpsampleLite", factor=4)
    config.train.update(steps=6, batch_size=8, crop=16, eval_every=3, checkpoint_every=2,
                        log_every=1, num_pictures=2, eval_batch_size=4)
    config.optim.milestones = (4,)
    return config
