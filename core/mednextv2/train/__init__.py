"""Fine-tuning and training: datasets, planning, cache, augmentation, loop, DDP, demo (issue 5).

Entry point: `run_training(TrainOptions(...))`; the CLI is `mednextv2 train`.
"""
from mednextv2.train.options import TrainOptions
from mednextv2.train.run import TrainResult, run_training

__all__ = ["TrainOptions", "TrainResult", "run_training"]
