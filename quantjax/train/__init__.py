"""Training: TrainState, optimizer, jitted steps, checkpoints, the loop and evaluation."""

from quantjax.train.evaluate import evaluate_workdir
from quantjax.train.loop import NaNLossError, train_and_evaluate

__all__ = ["NaNLossError", "evaluate_workdir", "train_and_evaluate"]
