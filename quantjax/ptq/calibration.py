"""Calibration data and the per-layer tensors a post-training method looks at.

Everything comes from the **validation** split (METHODS.md §2 and §4): the test split is only
read for the accuracy a finished run reports.
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from quantjax.intercept import module_path
from quantjax.intercept.layers import QUANTIZABLE

CALIBRATION_SPLIT = "validation"


def split_arrays(dataset, split: str, *, batch_size: int,
                 num_batches: int | None = None) -> tuple[np.ndarray, np.ndarray]:
  """The real (unpadded) images and labels of the first `num_batches` batches of `split`.

  Args:
    dataset: a quantjax.data.Dataset.
    split: 'validation' for calibration and searches; 'test' only for a final report.
    batch_size: examples per batch.
    num_batches: batches to take; None = the whole split.

  Returns:
    (images float32 [N, H, W, C] normalised, labels int32 [N]).
  """
  if num_batches is not None and num_batches < 1:
    raise ValueError(f"num_batches={num_batches!r} must be a positive integer")
  images, labels = [], []
  for i, batch in enumerate(dataset.eval_batches(split, batch_size=batch_size)):
    if num_batches is not None and i >= num_batches:
      break
    real = batch["mask"] > 0
    images.append(batch["image"][real])
    labels.append(batch["label"][real])
  return np.concatenate(images), np.concatenate(labels)


@functools.lru_cache(maxsize=8)
def _jitted_record(model: nn.Module):

  def record(variables, images):
    found: dict[str, dict[str, jax.Array]] = {}

    def interceptor(next_fun, args, kwargs, context):
      out = next_fun(*args, **kwargs)
      module = context.module
      if context.method_name == "__call__" and isinstance(module, QUANTIZABLE):
        found.setdefault(module_path(module), {"input": args[0], "output": out})
      return out

    with nn.intercept_methods(interceptor):
      model.apply(variables, images, train=False)
    return found

  return jax.jit(record)


def record_layers(model: nn.Module, variables: dict[str, Any],
                  images: np.ndarray) -> dict[str, dict[str, np.ndarray]]:
  """Every Conv/Dense layer's input and output in the float network, from one jitted pass.

  Args:
    model: the flax model.
    variables: its float variables.
    images: calibration images [N, H, W, C].

  Returns:
    {layer path: {'input': [N, ...], 'output': [N, ...]}} as host arrays (the output is the
    layer's own result, before the model's activation function).
  """
  out = _jitted_record(model)(variables, jnp.asarray(images))
  return jax.device_get(out)
