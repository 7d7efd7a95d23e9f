"""Metric output: TensorBoard event files, a JSONL log, and progress lines (steps/s, h:mm:ss ETA).

A resumed run first cuts both back to the restored step, so every step appears once: the JSONL
file is rewritten without the later lines, and TensorBoard is told to purge the later events of
the earlier event files (`purge_step`; TensorBoard drops them when it reads the directory).
"""

from __future__ import annotations

import json
import time
from typing import Any

import numpy as np
from absl import logging

from quantjax.reports.progress import format_duration
from quantjax.workdir import Workdir


def format_scalars(values: dict[str, float]) -> str:
  """'k=v, ...' for a log line: the ETA (a key ending in `eta_sec`) as h:mm:ss, the rest `.4g`.

  The JSONL file and TensorBoard keep the ETA in seconds; only the log line is for reading:
  `train/eta_sec=36000` is logged as `train/eta=10:00:00`.
  """
  return ", ".join(f"{k.removesuffix('_sec')}={format_duration(v)}" if k.endswith("eta_sec")
                   else f"{k}={v:.4g}" for k, v in values.items())


class MetricWriter:
  """Writes scalars to `<workdir>/metrics.jsonl`, TensorBoard (tensorboardX) and the log."""

  def __init__(self, workdir: Workdir, *, tensorboard: bool = True, enabled: bool = True,
               resume_step: int = 0, final: bool = False):
    """Appends to the workdir's metrics after cutting them back to `resume_step`.

    `enabled=False` (hosts other than the first) only logs. `final`: `resume_step` is the run's
    last step, whose evaluation lines are written again.
    """
    self._jsonl = self._tb = None
    if not enabled:
      return
    workdir.create()
    workdir.truncate_metrics(resume_step, keep_evaluations_at_step=not final)
    self._jsonl = open(workdir.metrics_file, "a")  # noqa: SIM115
    if tensorboard:
      from tensorboardX import SummaryWriter  # lazily: only the training process needs it

      self._tb = SummaryWriter(workdir.tensorboard_dir,
                               purge_step=resume_step + 1 if resume_step else None)

  def write(self, step: int, scalars: dict[str, Any], prefix: str = "") -> None:
    values = {f"{prefix}{k}": float(np.asarray(v)) for k, v in scalars.items()}
    if self._jsonl is not None:
      self._jsonl.write(json.dumps({"step": int(step), **values}) + "\n")
      self._jsonl.flush()
    if self._tb is not None:
      for k, v in values.items():
        self._tb.add_scalar(k, v, int(step))
    logging.info("step %d: %s", step, format_scalars(values))

  def write_hparams(self, hparams: dict[str, Any], metrics: tuple[str, ...]) -> None:
    """The HParams dashboard's record of the run: its config and the metrics to compare."""
    if self._tb is None:
      return
    from tensorboardX.summary import hparams as hparams_summary

    # Into this run's event file (tensorboardX's add_hparams would open a sub-run of its own).
    for summary in hparams_summary(hparams, dict.fromkeys(metrics, 0.0)):
      self._tb.file_writer.add_summary(summary)

  def write_histograms(self, step: int, values: dict[str, Any],
                       buckets: dict[str, dict[str, Any]]) -> None:
    """Histograms to TensorBoard only: of `values`, and pre-bucketed (`add_histogram_raw`)."""
    if self._tb is None:
      return
    for tag, v in values.items():
      self._tb.add_histogram(tag, np.asarray(v, np.float64).ravel(), int(step))
    for tag, raw in buckets.items():
      self._tb.add_histogram_raw(tag, global_step=int(step), **raw)

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
