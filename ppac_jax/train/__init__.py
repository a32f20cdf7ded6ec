"""Generic training infrastructure: mesh/sharding, optimiser, loop, checkpoints, metric files."""

from ppac_jax.train.checkpoint import Checkpointer, restore_params
from ppac_jax.train.loop import Task, TrainConfig, Trainer, train_and_evaluate
from ppac_jax.train.state import (OptimConfig, batch_sharding, check_batch_size, make_mesh,
                                  make_optimizer, replicated, shard_batch, split_model)
from ppac_jax.train.writer import MetricWriter

__all__ = ["Checkpointer", "MetricWriter", "OptimConfig", "Task", "TrainConfig", "Trainer",
           "batch_sharding", "check_batch_size", "make_mesh", "make_optimizer", "replicated",
           "restore_params", "shard_batch", "split_model", "train_and_evaluate"]
