"""Batches for training (seeded, resumable, augmented) and evaluation (every example once)."""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator

import numpy as np

from quantjax.data import augment as augment_lib
from quantjax.data.source import SPLITS, DatasetSpec, Sources, dataset_stats

Batch = dict[str, np.ndarray]


class Dataset:
  """One dataset's splits, normalisation and batching."""

  def __init__(self, sources: Sources):
    self._sources = sources
    train = sources.split("train")
    mean, std = dataset_stats(sources.name, train)
    self.spec = DatasetSpec(
        name=sources.name,
        num_classes=sources.num_classes,
        image_shape=tuple(int(d) for d in train.images.shape[1:]),
        split_sizes={s: len(sources.split(s).labels) for s in SPLITS},
        mean=mean,
        std=std,
    )
    self._scale = (1.0 / (255.0 * np.asarray(std, np.float32))).astype(np.float32)
    self._offset = (np.asarray(mean, np.float32) / np.asarray(std, np.float32)).astype(np.float32)

  def num_examples(self, split: str) -> int:
    return len(self._sources.split(split).labels)

  def normalise(self, images: np.ndarray) -> np.ndarray:
    """uint8 [B, H, W, C] -> float32 (x/255 - mean)/std."""
    return images.astype(np.float32) * self._scale - self._offset

  def train_batches(self, *, batch_size: int, seed: int, split: str = "train",
                    start_step: int = 0, augment: str = "none") -> Iterator[Batch]:
    """Infinite batches; step s's batch is a pure function of (seed, s), so runs resume exactly.

    Epoch e visits the split in the order of `default_rng([seed, e]).permutation`; the ragged end
    of each epoch is dropped.
    """
    augment_lib.check(augment)
    data = self._sources.split(split)
    n = len(data.labels)
    steps_per_epoch = n // batch_size
    if steps_per_epoch < 1:
      raise ValueError(f"batch_size={batch_size} exceeds the {n} examples of split {split!r}")
    step = start_step
    while True:
      epoch, within = divmod(step, steps_per_epoch)
      order = np.random.default_rng([seed, epoch]).permutation(n)
      for i in range(within, steps_per_epoch):
        idx = np.sort(order[i * batch_size:(i + 1) * batch_size])
        images = data.images[idx]
        rng = np.random.default_rng([seed, epoch, i, 1])
        images = augment_lib.apply(images, augment, rng)
        yield {"image": self.normalise(images), "label": data.labels[idx]}
        step += 1

  def eval_batches(self, split: str, *, batch_size: int) -> Iterator[Batch]:
    """One pass over `split`; the last batch is padded to `batch_size` and masked."""
    data = self._sources.split(split)
    n = len(data.labels)
    for start in range(0, n, batch_size):
      images = data.images[start:start + batch_size]
      labels = data.labels[start:start + batch_size]
      real = len(labels)
      mask = np.ones(batch_size, np.float32)
      if real < batch_size:
        pad = batch_size - real
        images = np.concatenate([images, np.zeros((pad, *images.shape[1:]), images.dtype)])
        labels = np.concatenate([labels, np.zeros(pad, labels.dtype)])
        mask[real:] = 0.0
      yield {"image": self.normalise(images), "label": labels, "mask": mask}


def get_dataset(name: str, *, data_dir: str | None = None, download: bool = True) -> Dataset:
  """The dataset `name` ('mnist5k' or a tfds name); bad names fail before any preparation."""
  return Dataset(Sources(name, data_dir=data_dir, download=download))


_END = object()


def prefetch(iterator: Iterator, size: int = 2, put: Callable | None = None) -> Iterator:
  """Runs `iterator` (and `put`, e.g. a device transfer) `size` batches ahead in a thread.

  Exceptions raised by the producer are re-raised in the consumer.
  """
  q: queue.Queue = queue.Queue(maxsize=size)
  stop = threading.Event()

  def produce():
    try:
      for item in iterator:
        if stop.is_set():
          return
        q.put(put(item) if put else item)
      q.put(_END)
    except BaseException as e:  # noqa: BLE001  handed to the consumer
      q.put(e)

  thread = threading.Thread(target=produce, daemon=True)
  thread.start()
  try:
    while True:
      item = q.get()
      if item is _END:
        return
      if isinstance(item, BaseException):
        raise item
      yield item
  finally:
    stop.set()
    # Unblock a producer waiting on a full queue.
    while not q.empty():
      q.get_nowait()
