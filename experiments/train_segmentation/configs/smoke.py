"""Seconds: tiny scenes, a tiny baseline and a few steps, for tests."""

from experiments.train_segmentation.configs import default


def get_config():
    config = default.get_config()
    config.data.update(height=32, width=48, num_segmenter_scenes=8, num_train_scenes=8,
                       num_val_scenes=4)
    config.baseline.update(segmenter_width=8, segmenter_steps=3, segmenter_batch_size=4)
    config.train.update(steps=6, batch_size=8, crop=(32, 32), eval_every=3, checkpoint_every=2,
                        log_every=1, eval_batch_size=4, num_pictures=2)
    config.model.pac_impl = "patches"  # compiles fastest at these sizes
    config.optim.milestones = (4,)
    return config
