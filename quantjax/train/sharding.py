"""Data parallelism over local devices: batch sharded on a 'data' mesh axis, state replicated.

The same code runs on one device. For several hosts, call `jax.distributed.initialize()` first
(see the README); the mesh then spans all devices and each host feeds its slice of the batch.
"""

from __future__ import annotations

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec


def make_mesh(num_devices: int = 0) -> Mesh:
  """A 1-D ('data',) mesh over the first `num_devices` devices (0 = all)."""
  devices = jax.devices()
  if num_devices:
    if num_devices > len(devices):
      raise ValueError(f"num_devices={num_devices} but only {len(devices)} devices are available")
    devices = devices[:num_devices]
  return Mesh(np.asarray(devices), ("data",))


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) axis split across the 'data' axis."""
  return NamedSharding(mesh, PartitionSpec("data"))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec())


def check_batch_size(batch_size: int, mesh: Mesh, what: str = "batch_size") -> None:
  n = mesh.devices.size
  if batch_size % n:
    raise ValueError(f"{what}={batch_size} must be divisible by the number of devices ({n})")
