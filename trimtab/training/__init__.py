"""Training: one loop for every method and task, run folders, checkpoints, resume."""

from trimtab.training.config import TrainConfig, load_config
from trimtab.training.trainer import TrainResult, train

__all__ = ["TrainConfig", "TrainResult", "load_config", "train"]
