"""Synthetic two-frame scenes, PPacNet refining a baseline estimator: <= 10 minutes on 2 CPU cores.

Sections: ``data`` (what is read), ``model`` (PPacNet, SPEC §2), ``train`` (loop, crops,
evaluation), ``optim`` (Adam and its schedule).
"""

from ml_collections import ConfigDict, config_dict


def get_config() -> ConfigDict:
    config = ConfigDict()
    config.data = ConfigDict(dict(
        dataset="synthetic",  # synthetic | tfds (same scenes via array_record) | lists
        height=96,  # synthetic scene size (divisible by 16)
        width=128,
        num_train_scenes=256,
        num_val_scenes=32,
        data_seed=0,
        data_root=config_dict.placeholder(str),  # lists: root the list paths are relative to
        estimates_root=config_dict.placeholder(str),  # lists: HD3 .npy estimates / _prob.npy
        train_list=config_dict.placeholder(str),
        val_list=config_dict.placeholder(str),
        missing_confidence="error",  # lists: "error" or "uniform"
        tfds_data_dir=config_dict.placeholder(str),  # tfds: default WORKDIR/tfds
    ))
    # depth_layers_prob[0] must equal the number of confidence levels of the data
    config.model = ConfigDict(dict(
        kernel_size_preprocessing=5,
        kernel_size_joint=7,
        conv_specification="pp",
        depth_layers_prob=(5, 5, 5, 2),
        depth_layers_guidance=(3, 15, 15, 10),
        depth_layers_joint=(2, 2, 2),
        model_seed=0,
        pac_impl="auto",  # PPAC layers: fused tap loop; measured in benchmarks/TRAIN_FLOW_IMPL.md
    ))
    config.train = ConfigDict(dict(
        steps=300,
        batch_size=8,  # global, over all devices
        crop=(48, 48),
        flip=True,
        seed=0,  # data order
        eval_every=100,
        checkpoint_every=100,
        log_every=10,
        eval_batch_size=8,
        num_pictures=4,
    ))
    config.optim = ConfigDict(dict(
        lr=2e-3,
        branch_lr=config_dict.placeholder(float),  # guidance/probability branches (unset: lr)
        milestones=(200, 260),
        gamma=0.5,
        weight_decay=0.0,
    ))
    return config
