"""The training engine: one loop for every task (pretraining and fine-tuning)."""

from cspt.engine.distributed import DistContext, setup_distributed
from cspt.engine.sampler import SeededBatchSampler
from cspt.engine.trainer import Task, Trainer

__all__ = ["DistContext", "SeededBatchSampler", "Task", "Trainer", "setup_distributed"]
