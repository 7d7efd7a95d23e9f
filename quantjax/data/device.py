"""Training batches made on the device: the split stays there; shuffling and augmentation jit.

For a split that fits in memory (mnist5k, Fashion-MNIST), copying each batch from NumPy and
augmenting it on the host costs a third of the steps a 2-core CPU could run: the host pipeline's
thread competes with XLA's compute threads. Here the uint8 split is copied to the device once, and
each batch is one small jitted program (gather, pad-and-crop, flip, normalise) dispatched
asynchronously, so the host only dispatches.

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

from quantjax.data import augment as augment_lib

PADS = {"shift": augment_lib.SHIFT_PAD, "shift_flip": augment_lib.SHIFT_PAD,
        "crop_flip": augment_lib.CROP_PAD}
FLIPS = ("shift_flip", "crop_flip")


@functools.partial(jax.jit, static_argnames=("n",))
def _permutation(key: jax.Array, epoch: jax.Array, n: int) -> jax.Array:
  return jax.random.permutation(jax.random.fold_in(key, epoch), n)


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


@functools.partial(jax.jit, static_argnames=("batch_size", "augment_name"))
def _batch(images, labels, order, index, key, scale, offset, *, batch_size: int,
           augment_name: str) -> dict[str, jax.Array]:
  positions = jax.lax.dynamic_slice(order, (index * batch_size,), (batch_size,))
  picked = augment(images[positions], augment_name, key)
  return {"image": picked.astype(jnp.float32) * scale - offset, "label": labels[positions]}


class DeviceSplit:
  """One split's uint8 images and int32 labels, resident on the default device."""

  def __init__(self, images: np.ndarray, labels: np.ndarray, scale: np.ndarray,
               offset: np.ndarray):
    self.images = jax.device_put(np.ascontiguousarray(images, np.uint8))  # [N, H, W, C]
    self.labels = jax.device_put(np.asarray(labels, np.int32))  # [N]
    self._scale = jnp.asarray(scale, jnp.float32)  # per channel: x·scale - offset normalises
    self._offset = jnp.asarray(offset, jnp.float32)

  def __len__(self) -> int:
    return int(self.labels.shape[0])

  def batches(self, *, batch_size: int, seed: int, start_step: int, augment_name: str
              ) -> Iterator[dict[str, jax.Array]]:
    """Endless batches from global step `start_step` on (see the module docstring)."""
    n = len(self)
    steps_per_epoch = n // batch_size
    root = jax.random.key(seed)
    epoch, first = divmod(start_step, steps_per_epoch)
    while True:
      order = _permutation(root, epoch, n)
      epoch_key = jax.random.fold_in(root, epoch)
      for i in range(first, steps_per_epoch):
        yield _batch(self.images, self.labels, order, i, jax.random.fold_in(epoch_key, i + 1),
                     self._scale, self._offset, batch_size=batch_size, augment_name=augment_name)
      epoch, first = epoch + 1, 0
