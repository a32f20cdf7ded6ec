"""Joint upsampling with PAC (PacJointUpsample and its baselines): ``python -m experiments.train_upsample``."""
