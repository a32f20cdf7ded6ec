"""Generic training infrastructure: mesh/sharding, optimiser, loop, checkpoints, metric files."""

from ppac_jax.train.aaf import AAF_GROUPS, aaf_optimizer, init_aaf_tables, poly_learning_rate
from ppac_jax.train.checkpoint import Checkpointer, restore_params
from ppac_jax.train.loop import Task, TrainConfig, Trainer, train_and_evaluate
from ppac_jax.train.state import (OptimConfig, batch_sharding, check_batch_size, make_mesh,
                                  make_optimizer, replicated, shard_batch, split_model)
from ppac_jax.train.writer import MetricWriter

__all__ = ["AAF_GROUPS", "Checkpointer", "MetricWriter", "OptimConfig", "Task", "TrainConfig",
           "Trainer", "aaf_optimizer", "batch_sharding", "check_batch_size", "init_aaf_tables",
           "make_mesh", "make_optimizer", "poly_learning_rate", "replicated", "restore_params",
           "shard_batch", "split_model", "train_and_evaluate"]
