"""Built-in scenes, PPacNet refining a small baseline segmenter: <= 10 minutes on 2 CPU cores.

Top-level ``method`` (refinement method, ``registry.METHODS``) and ``loss`` (``registry.LOSSES``);
sections ``data`` (what is read), ``baseline`` (the built-in segmenter), ``model`` (PPacNet, SPEC
§2; 0 in ``depth_layers_prob[0]`` / ``depth_layers_joint`` means the number of classes),
``train`` (loop, crops, evaluation), ``optim`` (Adam and its schedule).
"""

from ml_collections import ConfigDict, config_dict


def get_config() -> ConfigDict:
    config = ConfigDict()
    config.method = "ppac"
    config.loss = "ce"
    config.data = ConfigDict(dict(
        dataset="synthetic",  # synthetic | voc (list file + images + label PNGs + logits .npy)
        height=96,  # synthetic scene size (divisible by 4)
        width=128,
        num_segmenter_scenes=256,  # the baseline segmenter's own training scenes
        num_train_scenes=256,  # refinement training scenes (baseline logits on unseen scenes)
        num_val_scenes=64,  # held-out scenes
        data_seed=0,
        num_classes=21,  # voc: classes of the logits (synthetic: from the scene generator)
        ignore_label=255,
        data_root=config_dict.placeholder(str),  # voc: root the list paths are relative to
        train_list=config_dict.placeholder(str),
        val_list=config_dict.placeholder(str),
        logits_root=config_dict.placeholder(str),  # voc: <logits_root>/<image path>.npy
    ))
    config.baseline = ConfigDict(dict(
        segmenter_width=24,
        segmenter_steps=400,
        segmenter_batch_size=16,
        segmenter_lr=3e-3,
        segmenter_seed=0,
    ))
    config.model = ConfigDict(dict(
        kernel_size_preprocessing=5,
        kernel_size_joint=7,
        conv_specification="pp",
        depth_layers_prob=(0, 5, 5, 2),
        depth_layers_guidance=(3, 15, 15, 10),
        depth_layers_joint=(0, 0, 0),
        shared_filters=True,
        model_seed=0,
        pac_impl="auto",  # windowed-product implementation of the PPAC layers (see README)
    ))
    config.train = ConfigDict(dict(
        steps=400,
        batch_size=8,  # global, over all devices
        crop=(64, 64),
        flip=True,
        seed=0,  # data order
        eval_every=100,
        checkpoint_every=100,
        log_every=10,
        eval_batch_size=8,
        num_pictures=4,
    ))
    config.optim = ConfigDict(dict(
        lr=1e-3,  # joint PPAC layers (the original's base_lr)
        preprocessing_lr=config_dict.placeholder(float),  # guidance/probability branches
        milestones=(300,),
        gamma=0.5,
        weight_decay=0.0,
    ))
    return config
