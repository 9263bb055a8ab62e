"""The one training engine every task uses."""

from medmm.engine.trainer import EvalOutput, FitResult, Trainer, TrainingError, TrainState

__all__ = ["EvalOutput", "FitResult", "Trainer", "TrainState", "TrainingError"]
