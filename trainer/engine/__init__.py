"""The training engine: loop, optimizers and schedules, AMP, EMA, DDP, reporting."""

from trainer.engine.loop import TrainResult, train

__all__ = ["TrainResult", "train"]
