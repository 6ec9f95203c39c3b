"""The training engine: loop, optimizers and schedules, AMP, EMA, DDP, reporting."""

from trainer.engine.classify import train
from trainer.engine.loop import TrainResult

__all__ = ["TrainResult", "train"]
