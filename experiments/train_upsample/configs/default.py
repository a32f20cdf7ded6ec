"""Built-in scenes, PacJointUpsample upsampling depth x8: about 10 minutes on 2 CPU cores.

Sections: ``data`` (what is read), ``model`` (network and factor, SPEC_wave2 §1), ``train``
(loop, crops, evaluation), ``optim`` (Adam and its schedule). Top-level ``task`` is ``depth``
or ``flow`` (the target of the built-in scenes).
"""

from ml_collections import ConfigDict, config_dict


def get_config() -> ConfigDict:
    config = ConfigDict()
    config.task = "depth"  # depth (metric RMSE, metres) | flow (metric EPE, pixels)
    config.data = ConfigDict(dict(
        dataset="synthetic",  # synthetic | nyu (TFDS nyu_depth_v2) | sintel (folder layout)
        height=96,  # synthetic scene size
        width=128,
        num_train_scenes=256,
        num_val_scenes=32,
        data_seed=0,
        lowres_mode=config_dict.placeholder(str),  # unset: center (depth) / bilinear (flow)
        eval_border=config_dict.placeholder(int),  # unset: 6 (depth) / 0 (flow), as the original
        tfds_data_dir=config_dict.placeholder(str),  # nyu: TFDS data_dir (default TFDS's)
        max_val_images=0,  # 0 = all validation images
        sintel_root=config_dict.placeholder(str),  # sintel: MPI-Sintel-complete
        split_file=config_dict.placeholder(str),  # sintel: Sintel_train_val.txt (1 train, 2 val)
        render_pass="clean",  # sintel: clean | final | albedo
    ))
    config.model = ConfigDict(dict(
        model="PacJointUpsample",  # PacJointUpsample | PacJointUpsampleLite | DJIF | DJIFWide |
                                   # Bilinear | JBU_<kernel_size>_<scale_color>_<scale_space>
        factor=8,
        model_seed=0,
    ))
    config.train = ConfigDict(dict(
        steps=1000,
        batch_size=8,  # global, over all devices (the original: 1)
        crop=64,  # square training crop, a multiple of factor (the original: 256)
        flip=True,
        loss="l2",  # l2 (normalised units) | epe | rmse
        seed=0,  # data order and crops
        eval_every=250,
        checkpoint_every=250,
        log_every=10,
        eval_batch_size=8,
        num_pictures=4,
    ))
    config.optim = ConfigDict(dict(
        lr=2e-3,  # the original: 1e-4 for 5000 epochs; a short CPU run needs more
        milestones=(750,),
        gamma=0.1,
        weight_decay=0.0,
    ))
    return config
