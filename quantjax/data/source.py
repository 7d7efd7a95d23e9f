"""Dataset sources: `mnist5k` or any tfds name through `tfds.data_source` (ArrayRecord).

Reading needs no TensorFlow. Splits are 'train', 'validation' and 'test'; a dataset without a
validation split gets a seeded 10 % hold-out of its train split (calibration and post-training
searches use 'validation', so they never see 'test').
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
from typing import Any

import numpy as np
import tensorflow_datasets as tfds

from quantjax.data import mnist5k

SPLITS = ("train", "validation", "test")
HOLDOUT_FRACTION = 0.1
HOLDOUT_SEED = 1234
# Per-channel statistics in [0, 1] pixel units; other datasets get them estimated.
KNOWN_STATS = {
    "mnist5k": ((0.1307,), (0.3081,)),
    "mnist": ((0.1307,), (0.3081,)),
    "fashion_mnist": ((0.2860,), (0.3530,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
  name: str
  num_classes: int
  image_shape: tuple[int, int, int]  # [H, W, C]
  split_sizes: dict[str, int]  # 'train', 'validation', 'test' as this pipeline defines them
  mean: tuple[float, ...]  # per channel, [0, 1] pixel units
  std: tuple[float, ...]


@functools.lru_cache(maxsize=1)
def _tfds_names() -> tuple[str, ...]:
  return tuple(tfds.list_builders(with_community_datasets=False))


def check_name(name: str) -> None:
  """Raises a one-line ValueError for a name that is neither mnist5k nor a tfds builder."""
  base = name.split("/")[0].split(":")[0]
  if base == "mnist5k" or base in _tfds_names():
    return
  close = difflib.get_close_matches(base, ("mnist5k", *_tfds_names()), n=3)
  hint = f" (did you mean {', '.join(close)}?)" if close else ""
  raise ValueError(f"unknown dataset {name!r}{hint}; valid: 'mnist5k' or any name in "
                   "tfds.list_builders()")


def _read(source, indices: np.ndarray) -> list[dict[str, Any]]:
  """Records at `indices`, batched where the source supports it."""
  keys = [int(i) for i in indices]
  if hasattr(source, "__getitems__"):
    try:
      return list(source.__getitems__(keys))
    except TypeError:  # tfds.testing.mock_data's mocked source only supports __getitem__
      pass
  return [source[k] for k in keys]


def _to_arrays(records: list[dict[str, Any]]) -> tuple[np.ndarray, np.ndarray]:
  images = np.stack([np.asarray(r["image"]) for r in records])
  if images.ndim == 3:  # [N, H, W] -> [N, H, W, 1]
    images = images[..., None]
  labels = np.asarray([int(r["label"]) for r in records], np.int32)
  return images.astype(np.uint8), labels


@dataclasses.dataclass
class SplitArrays:
  images: np.ndarray  # [N, H, W, C] uint8
  labels: np.ndarray  # [N] int32


class Sources:
  """Random-access splits of one dataset, decoded once into memory (they are small here)."""

  def __init__(self, name: str, *, data_dir: str | None, download: bool):
    check_name(name)  # before any download or preparation
    self.name = name
    tfds.disable_progress_bar()
    if name == "mnist5k":
      builder = mnist5k.Mnist5k(data_dir=data_dir, file_format="array_record")
      builder.download_and_prepare()
    else:
      builder = tfds.builder(name, data_dir=data_dir)
      if download:
        builder.download_and_prepare(file_format="array_record")
    self._builder = builder
    info = builder.info
    self.num_classes = int(info.features["label"].num_classes)
    known = set(info.splits.keys())
    # Mocked or unprepared builders know no splits: then there is no validation split either.
    self._has_validation = "validation" in known
    self._cache: dict[str, SplitArrays] = {}

  def _raw(self, split: str) -> SplitArrays:
    source = self._builder.as_data_source(split=split)
    return SplitArrays(*_to_arrays(_read(source, np.arange(len(source)))))

  def split(self, split: str) -> SplitArrays:
    if split not in SPLITS:
      raise ValueError(f"split={split!r} is not valid; choose one of {', '.join(SPLITS)}")
    if split not in self._cache:
      if split == "test" or self._has_validation:
        self._cache[split] = self._raw(split)
      else:
        train = self._raw("train")
        holdout = _holdout_mask(len(train.labels))
        part = holdout if split == "validation" else ~holdout
        self._cache[split] = SplitArrays(train.images[part], train.labels[part])
    return self._cache[split]


def _holdout_mask(n: int) -> np.ndarray:
  """A seeded HOLDOUT_FRACTION of the train indices (at least one example each side)."""
  count = min(max(int(round(n * HOLDOUT_FRACTION)), 1), max(n - 1, 1))
  mask = np.zeros(n, bool)
  mask[np.random.default_rng(HOLDOUT_SEED).permutation(n)[:count]] = True
  return mask


def dataset_stats(name: str, train: SplitArrays) -> tuple[tuple[float, ...], tuple[float, ...]]:
  """Known per-channel mean/std, or estimated from up to 1,000 training images."""
  if name in KNOWN_STATS:
    return KNOWN_STATS[name]
  sample = train.images[:1000].astype(np.float64) / 255.0
  mean = sample.mean(axis=(0, 1, 2))
  std = np.maximum(sample.std(axis=(0, 1, 2)), 1e-3)
  return tuple(float(m) for m in mean), tuple(float(s) for s in std)
