"""Metric output: TensorBoard event files, a JSONL log, and progress lines (steps/s, ETA)."""

from __future__ import annotations

import json
import os
import time
from typing import Any

import numpy as np
from absl import logging


class MetricWriter:
  """Writes scalars to `<workdir>/metrics.jsonl`, TensorBoard (tensorboardX) and the log."""

  def __init__(self, workdir: str, *, tensorboard: bool = True, enabled: bool = True):
    """`enabled=False` (hosts other than the first) only logs."""
    self._jsonl = self._tb = None
    if not enabled:
      return
    os.makedirs(workdir, exist_ok=True)
    self._jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a")  # noqa: SIM115
    if tensorboard:
      from tensorboardX import SummaryWriter  # lazily: only the training process needs it

      self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"))

  def write(self, step: int, scalars: dict[str, Any], prefix: str = "") -> None:
    values = {f"{prefix}{k}": float(np.asarray(v)) for k, v in scalars.items()}
    if self._jsonl is not None:
      self._jsonl.write(json.dumps({"step": int(step), **values}) + "\n")
      self._jsonl.flush()
    if self._tb is not None:
      for k, v in values.items():
        self._tb.add_scalar(k, v, int(step))
    logging.info("step %d: %s", step, ", ".join(f"{k}={v:.4g}" for k, v in values.items()))

  def flush(self) -> None:
    if self._jsonl is not None:
      self._jsonl.flush()
    if self._tb is not None:
      self._tb.flush()

  def close(self) -> None:
    if self._jsonl is not None:
      self._jsonl.close()
    if self._tb is not None:
      self._tb.close()


class Progress:
  """Steps per second and time remaining, measured between calls."""

  def __init__(self, start_step: int, total_steps: int):
    self._total = total_steps
    self._last_step, self._last_time = start_step, time.perf_counter()

  def __call__(self, step: int) -> dict[str, float]:
    now = time.perf_counter()
    rate = (step - self._last_step) / max(now - self._last_time, 1e-9)
    self._last_step, self._last_time = step, now
    eta = (self._total - step) / rate if rate > 0 else float("inf")
    return {"steps_per_sec": rate, "eta_sec": eta}
