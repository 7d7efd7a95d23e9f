"""Several processes: JAX's multi-controller runtime, and the few things processes must agree on.

`initialize()` (train.py --distributed) starts `jax.distributed`: process 0 runs the coordinator
at `JAX_COORDINATOR_ADDRESS`; the process count and this process's id come from
`JAX_NUM_PROCESSES` and `JAX_PROCESS_ID` when set (as `python -m quantjax.train.launch` sets
them), else from the cluster (SLURM, Cloud TPU, ... as `jax.distributed` detects it). CPU
collectives between processes run over gloo (TCP).

Every process runs the same program on the same global arrays; collectives must be launched in
the same order everywhere, so a decision that one process could take alone is agreed first:
a signal (`agree_on_signal`), the checkpoint to resume from (`from_lead`), and an error of what
process 0 does alone, such as locking the workdir it alone writes (`on_lead`); a dataset prepared
on first use is prepared by process 0 before the others open it (`lead_first`).

A process that dies is noticed by the coordinator when its heartbeats stop
(`heartbeat_timeout_s`); JAX then ends every other process with a line saying that a task died
(the coordinator's own death is noticed at once). A stopped run resumes from its last checkpoint
when all processes are started again.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TypeVar

import jax
import numpy as np
from absl import logging
from jax.experimental import multihost_utils

NUM_PROCESSES_ENV = "JAX_NUM_PROCESSES"
PROCESS_ID_ENV = "JAX_PROCESS_ID"
HEARTBEAT_TIMEOUT_S = 100  # jax.distributed's default
_MESSAGE_BYTES = 1024  # an error message shared by process 0, cut to this length
T = TypeVar("T")


def initialize(*, heartbeat_timeout_s: int = HEARTBEAT_TIMEOUT_S) -> None:
  """Starts `jax.distributed` (before any JAX computation); see the module docstring."""
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  count, index = os.environ.get(NUM_PROCESSES_ENV), os.environ.get(PROCESS_ID_ENV)
  jax.distributed.initialize(
      num_processes=int(count) if count else None,
      process_id=int(index) if index else None,
      heartbeat_timeout_seconds=heartbeat_timeout_s)
  logging.info("process %d of %d: %d of %d devices (%s)", jax.process_index(),
               jax.process_count(), jax.local_device_count(), jax.device_count(),
               jax.devices()[0].device_kind)


def is_lead() -> bool:
  """Whether this is process 0, the one that writes the workdir and prints the result."""
  return jax.process_index() == 0


def agree_on_signal(signum: int | None) -> int | None:
  """The signal any process has received (the largest number), or None; same on every process."""
  if jax.process_count() == 1:
    return signum
  votes = multihost_utils.process_allgather(np.int32(signum or 0))
  return int(np.max(votes)) or None


def on_lead(fn: Callable[[], T]) -> T | None:
  """`fn()` on process 0 alone (None elsewhere); its ValueError is raised on every process.

  For what only process 0 does, such as creating and locking the workdir: without sharing its
  error the others would go on into the next collective and wait there for it.
  """
  result, error = None, None
  if is_lead():
    try:
      result = fn()
    except ValueError as e:
      error = e
  raise_lead_error(error)
  return result


def from_lead(fn: Callable[[], int | None]) -> int | None:
  """Process 0's `fn()` (a non-negative int or None) on every process (`on_lead`)."""
  value = on_lead(fn)
  if jax.process_count() == 1:
    return value
  shared = int(multihost_utils.broadcast_one_to_all(np.int64(-1 if value is None else value)))
  return None if shared < 0 else shared


def lead_first(fn: Callable[[], T]) -> T:
  """`fn()` on process 0 first, then on the others (`on_lead`).

  For what `fn` may create on a filesystem the processes share, such as a dataset prepared on
  first use: two processes building it at once collide.
  """
  result = on_lead(fn)
  return result if is_lead() else fn()


def raise_lead_error(error: ValueError | None) -> None:
  """Raises process 0's `error` (a one-line ValueError) on every process, if it has one; the
  others' own `error` is ignored."""
  if jax.process_count() == 1:
    if error is not None:
      raise error
    return
  message = np.zeros(_MESSAGE_BYTES, np.uint8)
  if error is not None:
    text = str(error).encode()[:_MESSAGE_BYTES]
    message[:len(text)] = np.frombuffer(text, np.uint8)
  shared = multihost_utils.broadcast_one_to_all(message)
  text = bytes(np.asarray(shared, np.uint8)).rstrip(b"\0").decode(errors="replace")
  if text:
    raise ValueError(text if is_lead() else f"process 0: {text}") from None
