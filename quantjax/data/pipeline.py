"""The input pipeline: seeded, resumable training batches and padded, masked evaluation batches."""

from __future__ import annotations

import dataclasses
import operator
from collections.abc import Iterator

import jax
import numpy as np

from quantjax.data import augment as augment_lib
from quantjax.data import device, placement, source, stats

Batch = dict[str, np.ndarray]
PIPELINES = ("host", "device", "auto")


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
  """What a model and a training loop need to know about a dataset."""

  name: str
  num_classes: int
  image_shape: tuple[int, int, int]  # [H, W, C]
  split_sizes: dict[str, int]  # 'train', 'validation', 'test' as this pipeline defines them
  mean: tuple[float, ...]  # per channel, in [0, 1] pixel units
  std: tuple[float, ...]  # per channel, in [0, 1] pixel units


def _positive(value: int, what: str) -> int:
  value = operator.index(value)
  if value < 1:
    raise ValueError(f"{what}={value} must be at least 1")
  return value


class Dataset:
  """One dataset's splits, normalisation and batching. Build it with `get_dataset`."""

  def __init__(self, splits: source.Splits):
    self._readers = splits.readers
    self._on_device: dict[tuple, device.DeviceSplit] = {}
    mean, std = stats.channel_stats(splits.name, splits.readers["train"])
    self._normalise = stats.Normaliser(mean, std)
    self.spec = DatasetSpec(
        name=splits.name,
        num_classes=splits.num_classes,
        image_shape=splits.image_shape,
        split_sizes={split: len(reader) for split, reader in splits.readers.items()},
        mean=mean,
        std=std,
    )

  def _reader(self, split: str) -> source.SplitReader:
    source.check_split(split)
    return self._readers[split]

  def num_examples(self, split: str) -> int:
    """Examples in `split` ('train', 'validation' or 'test')."""
    return len(self._reader(split))

  def raw(self, split: str, positions: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 images [N, H, W, C], int labels [N]) of `split` at `positions` (default: all), in
    split order, without normalisation: what an integer graph takes as input."""
    reader = self._reader(split)
    return reader.read(np.arange(len(reader)) if positions is None else np.asarray(positions))

  def normalise(self, images: np.ndarray) -> np.ndarray:
    """uint8 [B, H, W, C] -> float32 (x / 255 - mean) / std with this dataset's statistics."""
    return self._normalise(images)

  def train_batches(self, *, batch_size: int, seed: int, split: str = "train",
                    start_step: int = 0, augment: str = "none", pipeline: str = "host",
                    sharding: jax.sharding.NamedSharding | None = None) -> Iterator[Batch]:
    """Endless shuffled, augmented batches; step s's batch is a pure function of (seed, s).

    With pipeline='host', epoch e visits `split` in the order of
    `np.random.default_rng([seed, e]).permutation(n)`, cut into `n // batch_size` batches (the
    ragged end is dropped). The augmentation of batch i of epoch e draws from
    `np.random.default_rng([seed, e, i, 1])`. So starting at `start_step` yields exactly the
    batches an uninterrupted run yields from that step on. With pipeline='device' the split is
    kept on the device and batches are made there by jitted programs, with JAX's random streams
    (`quantjax.data.device`); 'auto' is 'device' for a split held in memory, else 'host'.

    With `sharding` (the training batch's, over a mesh that may span several processes) the
    batches are global jax.Arrays laid out by it, and the same for any number of processes: the
    host pipeline reads and augments only this process's rows of each batch
    (`placement.process_rows`), drawing the augmentation for the whole batch so that every row
    gets its one-process values; the device pipeline makes each device's rows on that device.

    Args:
      batch_size: examples per batch.
      seed: non-negative shuffling and augmentation seed.
      split: the split to draw from.
      start_step: global step of the first batch (steps count from 0).
      augment: 'none', 'shift' (digits), 'shift_flip' (clothes) or 'crop_flip' (CIFAR-style);
        see `augment.apply`.
      pipeline: 'host' (NumPy, in the caller's thread), 'device' or 'auto'.
      sharding: the layout of the global batch; None = the whole batch in this process.

    Returns:
      An iterator of dict(image=float32 [B, H, W, C] normalised, label=int32 [B]): global
      jax.Arrays laid out by `sharding` when it is given; else NumPy arrays from the host
      pipeline and jax.Arrays on the default device from the device one.

    Raises:
      ValueError: at once (not on the first `next`) for a bad split, augmentation, seed,
        batch size larger than the split, or negative start step.
    """
    reader = self._reader(split)
    augment_lib.check(augment)
    batch_size = _positive(batch_size, "batch_size")
    if len(reader) < batch_size:
      raise ValueError(f"batch_size={batch_size} exceeds the {len(reader)} examples of split "
                       f"{split!r}")
    seed, start_step = operator.index(seed), operator.index(start_step)
    if seed < 0 or start_step < 0:
      raise ValueError(f"seed={seed} and start_step={start_step} must not be negative")
    if self.pipeline_for(split, pipeline) == "device":
      return self._device_split(split, sharding).batches(
          batch_size=batch_size, seed=seed, start_step=start_step, augment_name=augment)
    if sharding is None:
      return self._train_batches(reader, batch_size, seed, start_step, augment,
                                 slice(0, batch_size))
    rows = placement.process_rows(sharding, batch_size)
    return (placement.assemble(b, sharding, batch_size)
            for b in self._train_batches(reader, batch_size, seed, start_step, augment, rows))

  def pipeline_for(self, split: str, pipeline: str = "auto") -> str:
    """'host' or 'device': which pipeline `train_batches(pipeline=...)` uses for `split`."""
    if pipeline not in PIPELINES:
      raise ValueError(f"input_pipeline={pipeline!r} is not valid; choose one of "
                       f"{', '.join(PIPELINES)}")
    if pipeline == "auto":
      return "device" if self._reader(split).in_memory else "host"
    return pipeline

  def _device_split(self, split: str,
                    sharding: jax.sharding.NamedSharding | None) -> device.DeviceSplit:
    key = (split, None if sharding is None else sharding.mesh)
    if key not in self._on_device:
      images, labels = self.raw(split)
      self._on_device[key] = device.DeviceSplit(images, labels, self._normalise.scale,
                                                self._normalise.offset, sharding)
    return self._on_device[key]

  def _train_batches(self, reader: source.SplitReader, batch_size: int, seed: int,
                     start_step: int, augment: str, rows: slice) -> Iterator[Batch]:
    """Rows `rows` of each global batch (all of them: `slice(0, batch_size)`)."""
    steps_per_epoch = len(reader) // batch_size
    epoch, first = divmod(start_step, steps_per_epoch)
    while True:
      order = np.random.default_rng([seed, epoch]).permutation(len(reader))
      for i in range(first, steps_per_epoch):
        # Sorted, so records are read in file order; a batch is a set to the loss (and to batch
        # statistics), so the order within it does not matter.
        positions = np.sort(order[i * batch_size:(i + 1) * batch_size])
        images, labels = reader.read(positions[rows])
        # The trailing 1 keeps this stream apart from the permutation's [seed, e], which
        # SeedSequence would otherwise zero-pad into the same state as [seed, e, 0, 0].
        draws = augment_lib.draw(augment, batch_size, np.random.default_rng([seed, epoch, i, 1]))
        if draws is not None:
          draws = draws.rows(rows)
        images = augment_lib.apply_drawn(images, augment, draws)
        yield {"image": self._normalise(images), "label": labels}
      epoch, first = epoch + 1, 0

  def eval_batches(self, split: str, *, batch_size: int,
                   sharding: jax.sharding.NamedSharding | None = None) -> Iterator[Batch]:
    """One pass over `split` in order: every example exactly once.

    Args:
      split: 'train', 'validation' or 'test'.
      batch_size: examples per batch; the last batch is padded up to it.
      sharding: the layout of the global batch: then global jax.Arrays, of which this process
        reads only its rows (`placement.process_rows`), so the processes share the split and a
        masked sum over the global batch counts every example once. None = NumPy batches, whole.

    Returns:
      An iterator of dict(image=float32 [B, H, W, C], label=int32 [B], mask=float32 [B]); mask
      is 1 for real examples and 0 for padding (black images with label 0).

    Raises:
      ValueError: at once for a bad split or batch size.
    """
    reader = self._reader(split)
    batch_size = _positive(batch_size, "batch_size")
    if sharding is None:
      return self._eval_batches(reader, batch_size, slice(0, batch_size))
    rows = placement.process_rows(sharding, batch_size)
    return (placement.assemble(b, sharding, batch_size)
            for b in self._eval_batches(reader, batch_size, rows))

  def _eval_batches(self, reader: source.SplitReader, batch_size: int,
                    rows: slice) -> Iterator[Batch]:
    """Rows `rows` of each padded global batch."""
    n = len(reader)
    for start in range(0, n, batch_size):
      # Examples start + rows.start ... of the split; the rows past its end are padding.
      first, stop = min(start + rows.start, n), min(start + rows.stop, n)
      images, labels = reader.read(np.arange(first, stop))
      size, real = rows.stop - rows.start, stop - first
      mask = np.zeros(size, np.float32)
      mask[:real] = 1.0
      if real < size:
        pad = size - real
        images = np.concatenate([images, np.zeros((pad, *images.shape[1:]), images.dtype)])
        labels = np.concatenate([labels, np.zeros(pad, labels.dtype)])
      yield {"image": self._normalise(images), "label": labels, "mask": mask}


def get_dataset(name: str, *, data_dir: str | None = None, download: bool = True,
                source_dir: str | None = None) -> Dataset:
  """Opens a dataset for batching.

  Args:
    name: 'mnist5k' (5,000 real digits, built offline on first use), 'fashion_mnist' (built
      offline from the original IDX files, see `quantjax.data.fashion_mnist`) or any name in
      `tfds.list_builders()`, read through `tfds.data_source` (ArrayRecord).
    data_dir: tfds data directory; None means tfds's default (~/tensorflow_datasets).
    download: whether tfds may download and prepare a missing dataset.
    source_dir: folder with fashion_mnist's four IDX files; None means where Debian's
      package `dataset-fashion-mnist` puts them.

  Returns:
    The dataset. Splits are decoded when first read (the train split's first 1,000 examples at
    once when its normalisation statistics are not known and must be estimated).

  Raises:
    ValueError: for an unknown name (before any download or preparation), a dataset that is
      not prepared while download=False, or one without 'train'/'test' splits, uint8 images
      and class labels.
  """
  return Dataset(source.open_splits(name, data_dir=data_dir, download=download,
                                    source_dir=source_dir))
