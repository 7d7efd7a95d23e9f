"""What a run's numbers depend on besides its config: software, devices, processes and cores.

Same seed, same config and the same `current()` give the same bits. A change of any field may
change the last bits of a reduction and, through quantizer rounding, the trained weights:
- `jax`, `jaxlib`, `numpy`, `flax`, `optax`: the programs XLA compiles and the host pipeline;
- `backend`, `device_kind`, `cpu`: the kernels XLA picks (CPU model: its vector instructions);
- `mesh_devices`, `process_count`: how the batch is split, so the order of the gradient sum
  (across processes it is summed by gloo, in yet another order); `device_count` is every device
  JAX sees, of which the mesh uses `mesh_devices`;
- `visible_cores`: XLA's CPU thread pool splits convolutions and reductions by it;
- `xla_flags`: anything set through XLA_FLAGS.
The host name and the time are kept to say where and when, and are not compared.

A workdir keeps one entry per start or resume (`Workdir.record_environment`), with the step it
started at, so a run resumed elsewhere says so, and `differences` names what changed.
"""

from __future__ import annotations

import datetime
import importlib.metadata
import os
import platform
import socket
from typing import Any

# Fields that do not change the numbers.
_NOT_COMPARED = ("host", "date", "step")
_PACKAGES = ("jax", "jaxlib", "numpy", "flax", "optax")


def _version(package: str) -> str:
  try:
    return importlib.metadata.version(package)
  except importlib.metadata.PackageNotFoundError:
    return "absent"


def _cpu_model() -> str:
  try:
    with open("/proc/cpuinfo") as f:
      return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
  except (OSError, StopIteration):
    return platform.processor() or platform.machine()


def _visible_cores() -> int:
  try:
    return len(os.sched_getaffinity(0))
  except AttributeError:  # not Linux
    return os.cpu_count() or 0


def current(mesh_devices: int) -> dict[str, Any]:
  """This process's environment, for a run on a mesh of `mesh_devices` devices."""
  import jax  # lazily: the workdir's files are read without JAX

  return {
      **{package: _version(package) for package in _PACKAGES},
      "backend": jax.default_backend(),
      "device_kind": jax.devices()[0].device_kind,
      "device_count": jax.device_count(),
      "mesh_devices": int(mesh_devices),
      "process_count": jax.process_count(),
      "visible_cores": _visible_cores(),
      "cpu": _cpu_model(),
      "xla_flags": os.environ.get("XLA_FLAGS", ""),
      "python": platform.python_version(),
      "host": socket.gethostname(),
      "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
  }


def differences(old: dict[str, Any], new: dict[str, Any]) -> list[tuple[str, Any, Any]]:
  """(field, old, new) for every field that may change the numbers and differs."""
  fields = sorted((set(old) | set(new)) - set(_NOT_COMPARED))
  return [(f, old.get(f), new.get(f)) for f in fields if old.get(f) != new.get(f)]
