"""PASCAL VOC 2012 layout on disk, the released checkpoint's setup (SPEC_wave2 3.1-3.3).

Set ``data_root``, ``train_list``, ``val_list`` and ``logits_root`` (DeepLab logits upsampled
to the image size, ``<logits_root>/<image path without extension>.npy``). PPacNet 21 classes,
crops 200 x 272, batch 16, Adam 1e-5 (joint layers) / 1e-4 (guidance and probability
branches), constant learning rate, no flips. The original trained 500 epochs on GPUs and summed
the per-GPU mean losses (DataParallel); here the loss is the mean over the global batch.
"""

from experiments.train_segmentation.configs import default


def get_config():
    config = default.get_config()
    config.data.update(dataset="voc", num_classes=21)
    config.model.update(depth_layers_prob=(21, 5, 5, 2), depth_layers_joint=(21, 21, 21),
                        pac_impl="auto")
    config.train.update(steps=100_000, batch_size=16, crop=(200, 272), flip=False,
                        eval_every=2000, checkpoint_every=1000, log_every=50, eval_batch_size=1,
                        num_pictures=4)
    config.optim.update(lr=1e-5, preprocessing_lr=1e-4, milestones=())
    return config
