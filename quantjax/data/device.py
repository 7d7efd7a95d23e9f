"""Training batches made on the device: the split stays there; shuffling and augmentation jit.

For a split that fits in memory (mnist5k, Fashion-MNIST), copying each batch from NumPy and
augmenting it on the host costs a third of the steps a 2-core CPU could run: the host pipeline's
thread competes with XLA's compute threads. Here the uint8 split is copied to the devices once
(each device of the batch's mesh holds it whole), and each batch is one small jitted program
(gather, pad-and-crop, flip, normalise) dispatched asynchronously, so the host only dispatches.
With several devices or processes the program's output is sharded like the training batch, so
each device makes only its own rows.

Randomness is JAX's (threefry, the same on every backend), keyed by the seed, the epoch and the
step, so step s's batch is still a pure function of (seed, s) and a resumed run sees exactly the
batches an uninterrupted one does. The streams differ from the host pipeline's NumPy ones: a run
records which pipeline made it (`config.input_pipeline`).

Epoch e visits the split in the order `jax.random.permutation(fold_in(key(seed), e), n)`, cut into
`n // batch_size` batches (the ragged end dropped); batch i of epoch e augments with
`fold_in(fold_in(key(seed), e), i + 1)`.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from quantjax.data import augment as augment_lib

PADS = {"shift": augment_lib.SHIFT_PAD, "shift_flip": augment_lib.SHIFT_PAD,
        "crop_flip": augment_lib.CROP_PAD}
FLIPS = ("shift_flip", "crop_flip")


def augment(images: jax.Array, name: str, key: jax.Array) -> jax.Array:
  """The device version of `augment.apply`: uint8 [B, H, W, C] in, same shape out.

  'shift' / 'shift_flip' / 'crop_flip' zero-pad by 2, 2 and 4 pixels and crop back at offsets
  uniform in 0..2·pad (rows, then columns, from `key`'s first split); the '_flip' ones then mirror
  each image left-right with probability 1/2 (from its second split).
  """
  augment_lib.check(name)
  if name == "none":
    return images
  b, h, w, c = images.shape
  pad = PADS[name]
  k_shift, k_flip = jax.random.split(key)
  offsets = jax.random.randint(k_shift, (b, 2), 0, 2 * pad + 1)
  padded = jnp.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
  crop = lambda img, off: jax.lax.dynamic_slice(img, (off[0], off[1], 0), (h, w, c))  # noqa: E731
  out = jax.vmap(crop)(padded, offsets)
  if name in FLIPS:
    flip = jax.random.bernoulli(k_flip, 0.5, (b,))
    out = jnp.where(flip[:, None, None, None], out[:, :, ::-1], out)
  return out


def _batch(images, labels, order, seed, epoch, index, *, scale: np.ndarray, offset: np.ndarray,
           batch_size: int, augment_name: str) -> dict[str, jax.Array]:
  """Batch `index` of epoch `epoch`: one program (the key derivation included, so a batch is one
  computation per device, not a trail of small eager ones)."""
  key = jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), epoch), index + 1)
  positions = jax.lax.dynamic_slice(order, (index * batch_size,), (batch_size,))
  picked = augment(images[positions], augment_name, key)
  return {"image": picked.astype(jnp.float32) * scale - offset, "label": labels[positions]}


def _permutation(seed, epoch, *, n: int) -> jax.Array:
  return jax.random.permutation(jax.random.fold_in(jax.random.key(seed), epoch), n)


class DeviceSplit:
  """One split's uint8 images and int32 labels, resident on every device of a mesh.

  The batches are laid out by `sharding` (by default the default device): each device computes
  its own rows of each batch from its copy of the split, so several processes each hold the split
  and together make the same global batch as one process. Threefry is partitionable in JAX
  (`jax_threefry_partitionable`), so a row's random values do not depend on the layout.
  """

  def __init__(self, images: np.ndarray, labels: np.ndarray, scale: np.ndarray,
               offset: np.ndarray, sharding: NamedSharding | None = None):
    if sharding is None:
      sharding = NamedSharding(Mesh(np.asarray(jax.local_devices()[:1]), ("data",)),
                               PartitionSpec("data"))
    self.sharding = sharding
    self._replicated = NamedSharding(sharding.mesh, PartitionSpec())
    self.images = self._replicate(np.ascontiguousarray(images, np.uint8))  # [N, H, W, C]
    self.labels = self._replicate(np.asarray(labels, np.int32))  # [N]
    # Per channel: x·scale - offset normalises (constants of the batch program).
    self._scale = np.asarray(scale, np.float32)
    self._offset = np.asarray(offset, np.float32)
    self._programs: dict[tuple, tuple] = {}

  def _replicate(self, array: np.ndarray) -> jax.Array:
    return jax.make_array_from_process_local_data(self._replicated, array, array.shape)

  def __len__(self) -> int:
    return int(self.labels.shape[0])

  def _compiled(self, batch_size: int, augment_name: str):
    """The (permutation, batch) programs for one batch size and augmentation, jitted once."""
    key = (batch_size, augment_name)
    if key not in self._programs:
      self._programs[key] = (
          jax.jit(functools.partial(_permutation, n=len(self)), out_shardings=self._replicated),
          jax.jit(functools.partial(_batch, scale=self._scale, offset=self._offset,
                                    batch_size=batch_size, augment_name=augment_name),
                  out_shardings=self.sharding),
      )
    return self._programs[key]

  def batches(self, *, batch_size: int, seed: int, start_step: int, augment_name: str
              ) -> Iterator[dict[str, jax.Array]]:
    """Endless batches from global step `start_step` on (see the module docstring)."""
    permutation, batch = self._compiled(batch_size, augment_name)
    steps_per_epoch = len(self) // batch_size
    seed32 = np.uint32(seed)
    epoch, first = divmod(start_step, steps_per_epoch)
    while True:
      order = permutation(seed32, np.int32(epoch))
      for i in range(first, steps_per_epoch):
        yield batch(self.images, self.labels, order, seed32, np.int32(epoch), np.int32(i))
      epoch, first = epoch + 1, 0
