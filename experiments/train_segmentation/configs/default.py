"""Built-in scenes, PPacNet refining a small baseline segmenter: <= 10 minutes on 2 CPU cores.

Top-level ``method`` (refinement method, ``registry.METHODS``) and ``loss`` (``registry.LOSSES``);
sections ``data`` (what is read), ``baseline`` (the built-in segmenter), ``model`` (PPacNet, SPEC
§2; 0 in ``depth_layers_prob[0]`` / ``depth_layers_joint`` means the number of classes),
``train`` (loop, crops, evaluation), ``optim`` (Adam and its schedule).
"""

from ml_collections import ConfigDict, config_dict


def get_config() -> ConfigDict:
    config = ConfigDict()
    config.method = "ppac"  # ppac | paccrf | hotswap
    config.loss = "ce"
    config.backbone = "baseline"  # paccrf / hotswap: the built-in baseline segmenter, or fcn8s
    config.width = 0.0625  # FCN-8s width multiplier (backbone=fcn8s; 1 = the real VGG widths)
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
        # method=paccrf: the CRF part of a pacnet model name (steps, loose, pairwise kernels)
        crf="crfi5p4d5161p4d541",
        backbone_fraction=0.4,  # backbone=fcn8s: share of the steps training the FCN first
        head_fraction=0.5,  # share of the (remaining) steps training the CRF head alone
        head_lr=1e-3,  # pacnet stage 1 (frozen backbone)
        joint_lr=1e-4,  # joint stage (pacnet: 1e-7 for VOC from caffe weights, too small here)
        # method=hotswap: PAC layers of the baseline segmenter, their guide and its scale
        hotswap_layers=("layers.2", "layers.3", "layers.4"),
        guide_from="layers.0",
        guide_scale=0.3,
        hotswap_lr=5e-5,  # fine-tuning a trained network: small steps (best with full-image crops)
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
    config.aaf = ConfigDict(dict(  # loss=affinity|aaf (aaf.py); the original's defaults
        margin=3.0,
        lambda_edge=1.0,
        lambda_not_edge=1.0,
        tables_lr=0.1,  # gradient ascent of the AAF size-weight tables (momentum SGD, poly)
        boundary_width=3,  # evaluation: boundary_miou within this many pixels of the boundaries
    ))
    config.optim = ConfigDict(dict(
        lr=1e-3,  # joint PPAC layers (the original's base_lr)
        preprocessing_lr=config_dict.placeholder(float),  # guidance/probability branches
        milestones=(300,),
        gamma=0.5,
        weight_decay=0.0,
        network_optimizer="adam",  # method=segmenter: adam | sgd (momentum 0.9, poly decay)
    ))
    return config
