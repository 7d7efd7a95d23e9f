"""A process's rows of a global batch, and the global array made from them."""

import types

import jax
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from quantjax.data import placement


def _fake(indices):
  """A sharding whose addressable devices hold `indices` (row slices) of the batch."""
  return types.SimpleNamespace(
      addressable_devices_indices_map=lambda shape: {i: (s,) for i, s in enumerate(indices)})


def test_one_process_holds_every_row():
  sharding = NamedSharding(Mesh(np.asarray(jax.devices()), ("data",)), PartitionSpec("data"))
  assert placement.process_rows(sharding, 32) == slice(0, 32)


def test_the_rows_of_a_process_are_the_block_its_devices_hold():
  assert placement.process_rows(_fake([slice(24, 32), slice(16, 24)]), 32) == slice(16, 32)
  assert placement.process_rows(_fake([slice(None)] * 2), 32) == slice(0, 32)  # replicated


def test_rows_that_are_not_one_block_are_refused():
  with pytest.raises(ValueError, match="not one block"):
    placement.process_rows(_fake([slice(0, 8), slice(16, 24)]), 32)
  with pytest.raises(ValueError, match="holds no device"):
    placement.process_rows(_fake([]), 32)


def test_assemble_lays_the_batch_out_like_device_put():
  sharding = NamedSharding(Mesh(np.asarray(jax.devices()), ("data",)), PartitionSpec("data"))
  batch = {"image": np.arange(8 * 3, dtype=np.float32).reshape(8, 3), "label": np.arange(8)}
  out = placement.assemble(batch, sharding, 8)
  for k, v in batch.items():
    assert out[k].sharding == sharding and out[k].shape == v.shape
    np.testing.assert_array_equal(out[k], v)
    assert [s.data.shape[0] for s in out[k].addressable_shards] == [2, 2, 2, 2]
