"""Evaluation of variables on a split (every example once), and of a workdir's checkpoint."""

from __future__ import annotations

import functools
import os
from typing import Any

import jax
from absl import logging

from quantjax import cost, data, host_memory
from quantjax.intercept import QUANT_STATE, QuantPlan
from quantjax.reports import layer_table, model_size_bits
from quantjax.reports import progress as progress_bar
from quantjax.train import checkpoint, experiment, sharding, steps
from quantjax.workdir import Workdir, write_json_atomic

MODES = ("float", "fakequant")


@functools.lru_cache(maxsize=16)
def _jitted_eval_step(model, plan, num_classes, mesh):
  return jax.jit(
      steps.make_eval_step(model, plan, num_classes),
      in_shardings=(sharding.replicated(mesh), sharding.batch_sharding(mesh)),
      out_shardings=sharding.replicated(mesh),
  )


def evaluate_variables(exp: experiment.Experiment, variables: dict[str, Any], split: str,
                       batch_size: int, mesh, plan: QuantPlan | None = None) -> dict[str, float]:
  """Accuracy and mean loss of `variables` on every example of `split` (padded batches masked).

  With several processes every one calls this and gets the same result: they share the split
  (each reads its rows of each batch) and the sums are taken over the global batch.
  """
  plan = exp.plan if plan is None else plan
  eval_step = _jitted_eval_step(exp.model, plan, exp.num_classes, mesh)
  totals = {"loss_sum": 0.0, "correct": 0.0, "count": 0.0}
  variables = sharding.replicate(variables, mesh)
  num_batches = -(-exp.dataset.num_examples(split) // batch_size)
  # Each process reads its rows of each batch; the masked sums are over the global batch.
  batches = data.prefetch(exp.dataset.eval_batches(
      split, batch_size=batch_size, sharding=sharding.batch_sharding(mesh)))
  with progress_bar.bar(total=num_batches, desc=f"eval {split}", unit="batch", leave=False,
                        enabled=jax.process_index() == 0) as batches_bar:
    for batch in batches:
      out = jax.device_get(eval_step(variables, batch))
      for k in totals:
        totals[k] += float(out[k])
      batches_bar.update(1)
  count = max(totals["count"], 1.0)
  return {
      "accuracy": totals["correct"] / count,
      "loss": totals["loss_sum"] / count,
      "num_examples": int(totals["count"]),
  }


def make_summary(exp: experiment.Experiment, results: dict[str, dict[str, float]], *,
                 step: int, variables: dict[str, Any] | None = None, **extra) -> dict[str, Any]:
  """The run summary: accuracy per split, bits per layer, model size and hardware cost.

  `cost` is `quantjax.cost.cost_report` of the plan: memory, multiplication cost, BOPs and packed
  parameter bytes, absolute and as a reduction against all-8-bit.
  """
  rows = layer_table(exp.layers, exp.plan, jax.device_get(variables) if variables else None)
  return {
      "dataset": exp.config.dataset,
      "model": exp.config.model,
      "quantized": bool(exp.plan),
      "step": int(step),
      "accuracy": {split: r["accuracy"] for split, r in results.items()},
      "loss": {split: r["loss"] for split, r in results.items()},
      "num_examples": {split: r["num_examples"] for split, r in results.items()},
      "layers": rows,
      **model_size_bits(rows),
      "cost": cost.cost_report(exp.layers, exp.plan),
      **extra,
  }


@host_memory.released_after_compiles()
def evaluate_workdir(workdir: str, *, split: str = "test", mode: str = "fakequant",
                     step: int | None = None, batch_size: int | None = None,
                     output: str | None = None) -> dict[str, Any]:
  """Evaluates the latest (or `step`) checkpoint of a workdir; writes and returns a JSON summary.

  Args:
    workdir: a directory written by `train_and_evaluate`.
    split: 'train', 'validation' or 'test'.
    mode: 'fakequant' evaluates with the run's quantizers; 'float' ignores them (same weights).
    step: checkpoint step; None = latest.
    batch_size: evaluation batch size; None = the run's.
    output: JSON path; None = `<workdir>/eval_<split>_<mode>_<step>.json`.
  """
  if mode not in MODES:
    raise ValueError(f"mode={mode!r} is not valid; choose one of {', '.join(MODES)}")
  wd = Workdir(workdir)
  config = wd.load_config()
  exp = experiment.build(config, quantized=True, training=False)
  if split not in ("train", "validation", "test"):
    raise ValueError(f"split={split!r} is not valid; choose one of train, validation, test")
  variables, step = checkpoint.restore_variables(workdir, step)
  variables = {k: v for k, v in variables.items() if v}
  plan = exp.plan if mode == "fakequant" else QuantPlan()
  if mode == "float":
    variables.pop(QUANT_STATE, None)
  mesh = sharding.make_mesh(config.get("num_devices", 0))
  batch_size = batch_size or config.eval_batch_size
  sharding.check_batch_size(batch_size, mesh, "batch_size")
  variables = jax.device_put(variables)  # jnp.asarray would compile a copy per leaf shape
  result = evaluate_variables(exp, variables, split, batch_size, mesh, plan=plan)
  summary = {
      "workdir": os.path.abspath(workdir),
      "step": step,
      "split": split,
      "mode": mode,
      **result,
      "layers": layer_table(exp.layers, plan),
  }
  output = output or wd.eval_file(split, mode, step)
  write_json_atomic(output, summary)
  logging.info("%s %s accuracy %.4f on %d examples -> %s", split, mode, result["accuracy"],
               result["num_examples"], output)
  return summary


