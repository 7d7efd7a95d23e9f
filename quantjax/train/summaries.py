"""What TensorBoard shows besides scalars: the config as hparams, quantizer histograms.

- `hparams(config)`: the run's config flattened to dotted scalar and string fields, for the
  HParams dashboard (written once, when a run starts).
- `quantizer_histograms(plan, params, quant_state)`: every `config.histogram_every_steps` steps,
  one histogram per quantizer parameter of each layer (LSQ `scale`, PACT `alpha`, ESB `alpha`, ...;
  tag `quant/<layer>/<tensor>_<name>`) and the level occupancy of each quantized kernel: the
  fraction of its weights at each level of the quantizer (`levels/<layer>/weight`, bucket i =
  the i-th level, ascending; for a per-channel quantizer, the i-th level of each channel's set).

Levels come from the quantizer contract (`Quantizer.levels(params, state, x, role='weight')`)
and the kernel from `Quantizer.apply`, so no quantizer is special-cased here.
"""

from __future__ import annotations

import functools
import json
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from quantjax.intercept import QuantPlan
from quantjax.workdir import record

_PREFIX = {"weight": "kernel", "act": "input", "bias": "bias", "output": "output"}  # interceptor's


def hparams(config) -> dict[str, float | int | bool | str]:
  """The config as flat hparams: dotted field paths; lists, dicts and None as JSON strings."""
  out = {}
  for key, value in record.flatten(record.canonical(config)).items():
    out[key] = value if isinstance(value, (bool, int, float, str)) else json.dumps(value)
  return out


def _subtree(tree: Any, path: str) -> dict:
  for part in path.split("/"):
    tree = (tree or {}).get(part, {})
  return dict(tree or {})


def _occupancy(quantizer, kernel, qparams, qstate) -> jax.Array:
  """Fraction of `kernel`'s fake-quantized values at each level (float32 [L])."""
  levels = jnp.asarray(quantizer.levels(qparams, qstate, kernel, role="weight"), jnp.float32)
  q, _ = quantizer.apply(kernel, qparams, qstate, "weight", False)
  num_levels = levels.shape[-1]
  if levels.ndim == 1:
    levels, q = levels[None], q.reshape(1, -1)
  else:  # [C, L]: one level set per output channel (the kernel's last axis)
    q = q.reshape(-1, levels.shape[0]).T
  # The nearest level: between two levels, the midpoint decides (repeated levels share a bucket).
  midpoints = (levels[:, 1:] + levels[:, :-1]) / 2
  index = jax.vmap(jnp.searchsorted)(midpoints, q.astype(jnp.float32))
  counts = jnp.bincount(index.ravel(), length=num_levels)
  return counts / index.size


@functools.partial(jax.jit, static_argnums=0)
def _compute(plan: QuantPlan, params, quant_state) -> tuple[dict, dict]:
  scales, occupancy = {}, {}
  for path, lq in plan.layers:
    layer_params, layer_state = _subtree(params, path), _subtree(quant_state, path)
    for tensor, prefix in _PREFIX.items():
      quantizer = getattr(lq, tensor)
      if quantizer is None:
        continue
      for name, value in layer_params.items():
        if name.startswith(f"{prefix}_"):
          scales[f"quant/{path}/{tensor}_{name[len(prefix) + 1:]}"] = value
      if tensor == "weight" and "kernel" in layer_params:
        strip = lambda d: {k[len("kernel_"):]: v for k, v in d.items()  # noqa: E731
                           if k.startswith("kernel_")}
        try:
          occupancy[f"levels/{path}/weight"] = _occupancy(
              quantizer, layer_params["kernel"], strip(layer_params), strip(layer_state))
        except NotImplementedError:  # a quantizer without levels(): its scales are still shown
          logging.warning("%s: %s has no levels(); no occupancy histogram", path,
                          type(quantizer).__name__)
  return scales, occupancy


def quantizer_histograms(plan: QuantPlan, params, quant_state) -> tuple[dict, dict]:
  """({tag: learned quantizer parameter values}, {tag: occupancy fractions per level}).

  Args:
    plan: the run's quantization plan.
    params: the model's params (the quantizer parameters live beside each kernel).
    quant_state: the 'quant_state' collection.

  Returns:
    Two dicts of host numpy arrays: parameter values to histogram, and per-kernel level
    occupancy (float [L], summing to 1) to write as one bucket per level.
  """
  if not plan:
    return {}, {}
  return jax.device_get(_compute(plan, params, quant_state))


def occupancy_buckets(fractions: np.ndarray) -> dict[str, Any]:
  """`add_histogram_raw` arguments for occupancy: bucket i spans (i - 0.5, i + 0.5]."""
  fractions = np.asarray(fractions, np.float64)
  index = np.arange(len(fractions), dtype=np.float64)
  return dict(min=-0.5, max=len(fractions) - 0.5, num=1.0, sum=float(np.sum(fractions * index)),
              sum_squares=float(np.sum(fractions * index**2)),
              bucket_limits=(index + 0.5).tolist(), bucket_counts=fractions.tolist())
