"""`eval.py --mode=int`: a workdir exported and run on the emulator, beside its fake-quant model."""

from __future__ import annotations

import os
from typing import Any

import jax
import numpy as np

from quantjax import host_memory
from quantjax.export import export_run, load_run
from quantjax.intercept import quantized_apply
from quantjax.intsim.accelerator import Accelerator
from quantjax.intsim.emulator import Emulator
from quantjax.intsim.report import hardware_report
from quantjax.train import sharding
from quantjax.workdir import Workdir, write_json_atomic

SPLITS = ("train", "validation", "test")


def raw_split(dataset, split: str) -> tuple[np.ndarray, np.ndarray]:
  """(uint8 images, labels) of a whole split: the integer graph takes the raw pixels."""
  if split not in SPLITS:
    raise ValueError(f"split={split!r} is not valid; choose one of {', '.join(SPLITS)}")
  return dataset.raw(split)  # the pipeline's batches are normalised; the graph wants uint8


def compare(exp, variables, graph, images, labels, accel: Accelerator,
            batch_size: int = 250) -> dict[str, Any]:
  """Integer emulation against the fake-quant model on the same images.

  The emulator runs over every batch first and is released before the fake-quant model is
  compiled, so the process never holds both programs (and their compilations) at once.
  """
  emulator = Emulator(graph, accel)
  starts = range(0, len(labels), batch_size)
  pred_int = []
  totals: dict[str, dict[str, int]] = {}
  for start in starts:
    out, stats = emulator(images[start:start + batch_size])
    pred_int.append(np.argmax(out, -1))
    for name, s in stats.items():
      t = totals.setdefault(name, {"overflows": 0, "max_abs": 0})
      t["overflows"] += s["overflows"]
      t["max_abs"] = max(t["max_abs"], s["max_abs"])
  del emulator
  apply = quantized_apply(exp.model, exp.plan, training=False)
  fake = jax.jit(lambda v, x: apply(v, x, train=False))
  variables = jax.device_put(variables)  # once, not with every batch
  pred_fq = [np.argmax(np.asarray(fake(variables, exp.dataset.normalise(
      images[start:start + batch_size]))), -1) for start in starts]
  pred_int, pred_fq = np.concatenate(pred_int), np.concatenate(pred_fq)
  return {
      "accuracy_int": float(np.mean(pred_int == labels)),
      "accuracy_fakequant": float(np.mean(pred_fq == labels)),
      "agreement": float(np.mean(pred_int == pred_fq)),
      "num_examples": int(len(labels)),
      "overflows": sum(s["overflows"] for s in totals.values()),
      "stats": totals,
      "hardware": hardware_report(graph, totals),
  }


@host_memory.released_after_compiles()
def evaluate_int(workdir: str, *, split: str = "test", step: int | None = None,
                 accel: Accelerator | None = None, batch_size: int = 250,
                 output: str | None = None) -> dict[str, Any]:
  """Exports a workdir's checkpoint, runs it on the emulator; writes and returns a JSON summary.

  On a CPU, a process that starts JAX here gets one device per core, and the emulator splits
  each batch over them (`sharding.cpu_device_per_core`).
  """
  sharding.cpu_device_per_core()
  accel = accel or Accelerator()
  if split not in SPLITS:
    raise ValueError(f"split={split!r} is not valid; choose one of {', '.join(SPLITS)}")
  exp, variables, step = load_run(workdir, step)
  graph = export_run(exp, variables)
  images, labels = raw_split(exp.dataset, split)
  result = compare(exp, variables, graph, images, labels, accel, batch_size)
  summary = {"workdir": os.path.abspath(workdir), "step": step, "split": split, "mode": "int",
             "accelerator": {"acc_bits": accel.acc_bits, "overflow": accel.overflow,
                             "rounding": accel.rounding, "mac": accel.mac},
             "accuracy": result["accuracy_int"], **result}
  # One file per accelerator setting: a run on a narrower accumulator keeps the 32-bit result.
  output = output or Workdir(workdir).eval_file(
      split, "int", step, f"acc{accel.acc_bits}_{accel.overflow}_{accel.rounding}_{accel.mac}")
  write_json_atomic(output, summary)
  return summary
