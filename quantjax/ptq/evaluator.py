"""Accuracy of a model on fixed data as a function of its variables, compiled once.

A post-training search evaluates many candidates that differ only in quantizer variables (for
`fixed_point`, the traced `bits` and `fractional_bits` in 'quant_state'), so one jitted function of
the variables serves them all. `num_traces` counts how often it was traced (compiled).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from quantjax.intercept import QuantPlan, quantized_apply


class Evaluator:
  """`evaluator(variables) -> accuracy` on `images`, `labels` with `plan` applied."""

  def __init__(self, model: nn.Module, plan: QuantPlan | None, images: np.ndarray,
               labels: np.ndarray, *, batch_size: int = 500):
    if len(images) != len(labels) or not len(images):
      raise ValueError(f"{len(images)} images and {len(labels)} labels: need equal, non-zero")
    self.num_traces = 0
    self.num_calls = 0
    n = len(images)
    pad = (-n) % batch_size
    shape = (-1, batch_size, *images.shape[1:])
    self._images = jnp.asarray(np.concatenate([images, np.zeros((pad, *images.shape[1:]),
                                                                 images.dtype)]).reshape(shape))
    self._labels = jnp.asarray(np.concatenate([labels, np.zeros(pad, labels.dtype)]).reshape(
        shape[:2]))
    self._mask = jnp.asarray((np.arange(n + pad) < n).reshape(shape[:2]), jnp.float32)
    self._count = float(n)
    apply = quantized_apply(model, plan, training=False)

    def correct(variables, images, labels, mask):
      self.num_traces += 1  # runs only while tracing

      def one(batch):
        x, y, m = batch
        logits = apply(variables, x, train=False)  # [B, num_classes]
        return jnp.sum((jnp.argmax(logits, -1) == y).astype(jnp.float32) * m)

      return jnp.sum(jax.lax.map(one, (images, labels, mask)))

    self._correct = jax.jit(correct)

  def __call__(self, variables: dict[str, Any]) -> float:
    self.num_calls += 1
    total = self._correct(variables, self._images, self._labels, self._mask)
    return float(total) / self._count

  def work(self, macs: Sequence[int]) -> dict[str, int]:
    """Multiply-adds done so far, from each layer's per-image `macs`, in the terms of
    `SuffixEvaluator.work`: every call counts every image through every layer."""
    whole = self.num_calls * int(self._count) * sum(macs)
    return {"counted": whole, "whole": whole, "records": 0}
