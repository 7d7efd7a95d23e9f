"""Where a global batch's rows live: this process's rows, and the global array built from them.

With several processes (`jax.distributed`), a batch sharded over the 'data' axis of a mesh that
spans every process's devices is held in parts: process p's devices hold a contiguous block of
rows (the mesh lists each process's devices together, `jax.devices()` order). Process p reads and
augments only those rows, and `jax.make_array_from_process_local_data` joins the processes' blocks
into one global array without moving data between them. With one process the block is the whole
batch and the global array is the batch on the mesh's devices.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np


def process_rows(sharding: jax.sharding.Sharding, batch_size: int) -> slice:
  """The rows of a [batch_size, ...] global batch that this process's devices hold.

  Raises:
    ValueError: the sharding gives this process no rows, or rows that are not one block.
  """
  indices = sharding.addressable_devices_indices_map((batch_size,)).values()
  blocks = sorted({index[0].indices(batch_size)[:2] for index in indices})
  if not blocks:
    raise ValueError(f"process {jax.process_index()} holds no device of the batch's mesh")
  start, stop = blocks[0][0], blocks[-1][1]
  if sum(b - a for a, b in blocks) != stop - start:
    raise ValueError(f"process {jax.process_index()} holds rows {blocks} of each batch, not one "
                     "block: build the mesh from jax.devices() in order")
  return slice(start, stop)


def assemble(local: dict[str, Any], sharding: jax.sharding.Sharding,
             batch_size: int) -> dict[str, jax.Array]:
  """Global [batch_size, ...] arrays laid out by `sharding` from this process's rows `local`."""
  return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v),
                                                    (batch_size, *np.shape(v)[1:]))
          for k, v in local.items()}
