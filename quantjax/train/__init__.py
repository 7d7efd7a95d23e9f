"""Training: TrainState, optimizer, jitted steps, checkpoints, the loop, evaluation, processes."""

from quantjax.train.evaluate import evaluate_workdir
from quantjax.train.loop import NaNLossError, train_and_evaluate
from quantjax.train.preemption import Preempted

__all__ = ["NaNLossError", "Preempted", "evaluate_workdir", "train_and_evaluate"]
