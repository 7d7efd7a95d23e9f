"""Data parallelism: the batch sharded on a 'data' mesh axis, the state replicated.

The same code runs on one device, several local devices and several processes
(`jax.distributed`, see `quantjax.train.distributed`): the mesh then spans every process's
devices, each process feeds only the rows of each batch that its devices hold
(`quantjax.data.placement`), and the state is replicated on every device.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import numpy as np
from jax._src import xla_bridge
from jax.sharding import Mesh, NamedSharding, PartitionSpec

CPU_DEVICE_COUNT_FLAG = "--xla_force_host_platform_device_count"


def cpu_device_per_core() -> bool:
  """Gives XLA's CPU backend one (fake) device per core this process may run on.

  XLA's CPU backend runs each convolution on one core, so a program on one CPU device leaves
  the others mostly idle; one device per core lets a program that splits its batch over the
  local devices use them all (`quantjax.ptq.suffix`, `quantjax.intsim.Emulator`, and training
  through `cpu_devices_for_training`). Must run before JAX starts its backends (it sets
  XLA_FLAGS); does nothing if XLA_FLAGS already sets a device count or they started.

  Returns:
    Whether it set the device count.
  """
  flags = os.environ.get("XLA_FLAGS", "")
  if CPU_DEVICE_COUNT_FLAG in flags or xla_bridge.backends_are_initialized():
    return False
  os.environ["XLA_FLAGS"] = f"{flags} {CPU_DEVICE_COUNT_FLAG}={cpu_cores()}".strip()
  return True


# A training step whose forward pass (the global batch's) has at least this many multiply-adds
# gets one CPU device per core under cpu_devices='auto'. results/cpu_devices*.md (two 2-core
# hosts): LeNet-5 (0.05 G at batch 128) trains 0.73-1.08x as fast on two devices as on one
# (medians), ResNet-20 (4.0 G) 1.15-1.71x and the Sequential net (5.7 G) 1.43-1.94x;
# VGG-small (15 G) and ResNet-18 are larger still.
PER_CORE_MIN_STEP_MACS = 1e9
CPU_DEVICES = ("auto", "one", "per_core")


def cpu_devices_for_training(setting: str, step_macs: float) -> bool:
  """Chooses, before JAX starts, how many CPU devices a training run gets (`config.cpu_devices`).

  Args:
    setting: 'auto' (one device per core when a step's forward pass has at least
      PER_CORE_MIN_STEP_MACS multiply-adds, else XLA's one), 'per_core' or 'one'.
    step_macs: multiply-adds of one training step's forward pass (the global batch).

  Returns:
    Whether it set one device per core (nothing is set when XLA_FLAGS names a device count,
    when JAX has started, or with 'one').

  Raises:
    ValueError: an unknown setting (one line, naming the valid ones).
  """
  if setting not in CPU_DEVICES:
    raise ValueError(f"cpu_devices={setting!r} is not valid; choose one of "
                     f"{', '.join(CPU_DEVICES)}")
  if setting == "one" or (setting == "auto" and step_macs < PER_CORE_MIN_STEP_MACS):
    return False
  return cpu_device_per_core()


def cpu_cores() -> int:
  """The cores this process may run on (at least 1)."""
  cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
  return max(cores or 1, 1)


def make_mesh(num_devices: int = 0) -> Mesh:
  """A 1-D ('data',) mesh over the first `num_devices` devices (0 = all).

  With several processes the mesh must hold every device, so that each process feeds its part.
  """
  devices = jax.devices()  # each process's devices together: its rows of a batch are one block
  if num_devices:
    if num_devices > len(devices):
      raise ValueError(f"num_devices={num_devices} but only {len(devices)} devices are available")
    if jax.process_count() > 1 and num_devices != len(devices):
      raise ValueError(f"num_devices={num_devices} cannot be used with {jax.process_count()} "
                       f"processes: each needs its devices in the mesh; use 0 (all "
                       f"{len(devices)})")
    devices = devices[:num_devices]
  return Mesh(np.asarray(devices), ("data",))


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) axis split across the 'data' axis."""
  return NamedSharding(mesh, PartitionSpec("data"))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec())


def replicate(tree: Any, mesh: Mesh) -> Any:
  """`tree` with every leaf a copy on each device of `mesh`, whichever processes hold them.

  A leaf already replicated on the mesh is kept; any other (NumPy, or on one device) must hold
  the same values in every process, as the state a seeded initialisation computes does. Every
  leaf comes back with the mesh's own sharding, even where another one places it alike (a
  single-device array on a one-device mesh): the jitted step's outputs carry the mesh, and an
  input without it would make the step compile a second time.
  """
  sharding = replicated(mesh)

  def put(x):
    if isinstance(x, jax.Array) and x.sharding == sharding:
      return x
    if (isinstance(x, jax.Array) and jax.process_count() == 1
        and x.sharding.is_equivalent_to(sharding, x.ndim)):
      return jax.device_put(x, sharding)  # the same buffers, now typed with the mesh
    value = np.asarray(x)
    return jax.make_array_from_process_local_data(sharding, value, value.shape)

  return jax.tree_util.tree_map(put, tree)


def check_batch_size(batch_size: int, mesh: Mesh, what: str = "batch_size") -> None:
  n = mesh.devices.size
  if batch_size % n:
    raise ValueError(f"{what}={batch_size} must be divisible by the number of devices ({n})")
