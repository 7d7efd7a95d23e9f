"""The line that says where a measured figure was taken: cores, CPU model, JAX and its backend."""

from __future__ import annotations

import os
import platform


def machine() -> str:
  """E.g. '2 cores, AMD EPYC 7B13, jax 0.10.2 on cpu'."""
  import jax

  cpu = platform.processor() or platform.machine()
  try:
    with open("/proc/cpuinfo") as f:
      cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
  except (OSError, StopIteration):
    pass
  return f"{os.cpu_count()} cores, {cpu}, jax {jax.__version__} on {jax.default_backend()}"
