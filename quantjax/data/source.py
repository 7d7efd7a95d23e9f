"""Dataset splits as random-access readers over `tfds.data_source` (ArrayRecord, no TensorFlow).

A dataset is `mnist5k` (built offline on first use) or any tfds name. Its splits are 'train',
'validation' and 'test'; a dataset without a validation split gets a seeded 10 % hold-out of its
train split, so calibration and post-training searches (which use 'validation') never see 'test'.

Under `tfds.testing.mock_data` (tfds 4.9.x) `tfds.data_source` is mocked too, through
`DatasetBuilder.as_data_source`, with two quirks handled here: the mock knows no split names (its
split dict is empty, so every dataset gets the hold-out), and its batched `__getitems__` raises
TypeError (it is installed as an unbound `functools.partial`), so records are read one by one.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import math
import threading
from collections.abc import Sequence
from typing import Any

import numpy as np
import tensorflow_datasets as tfds

from quantjax.data import (
  fashion_mnist,
  mnist5k,  # noqa: F401  registers the `mnist5k` builder with tfds
  preparation,
)

SPLITS = ("train", "validation", "test")
HOLDOUT_FRACTION = 0.1
# Fixed: which train examples become 'validation' is part of the dataset's definition.
HOLDOUT_SEED = 1234
# Splits whose source decodes to less than this are read once and kept as NumPy arrays.
IN_MEMORY_BYTES = 200 * 2**20
_FILL_CHUNK = 1024  # records per batched read while filling the in-memory copy
# Built offline (from data inside the package, or files on this machine): prepared whatever
# `download` says.
_OFFLINE = ("mnist5k", "fashion_mnist")
# quantjax's name -> the tfds builder that builds it offline.
_BUILDERS = {"fashion_mnist": fashion_mnist.NAME}


def base_name(name: str) -> str:
  """The builder name without config or version: 'cifar10/plain_text:3.0.2' -> 'cifar10'."""
  return name.split("/")[0].split(":")[0]


@functools.lru_cache(maxsize=1)
def _tfds_names() -> tuple[str, ...]:
  return tuple(tfds.list_builders(with_community_datasets=False))


def check_name(name: str) -> None:
  """Raises a one-line ValueError unless `name` is mnist5k or a tfds builder (no I/O)."""
  if isinstance(name, str) and (base_name(name) in _OFFLINE or base_name(name) in _tfds_names()):
    return
  close = difflib.get_close_matches(base_name(str(name)), (*_OFFLINE, *_tfds_names()), n=3)
  hint = f" (did you mean {', '.join(repr(c) for c in close)}?)" if close else ""
  raise ValueError(f"unknown dataset {name!r}{hint}; valid: 'mnist5k' or any name in "
                   "tfds.list_builders()")


def check_split(split: str) -> None:
  if split not in SPLITS:
    raise ValueError(f"split={split!r} is not valid; choose one of {', '.join(SPLITS)}")


class SplitReader:
  """One split, read by position: uint8 images [N, H, W, C] and int32 labels [N].

  Position i is record `keys[i]` of a tfds data source, so the train/validation hold-out can
  share one source. With `in_memory`, the first read decodes the whole split and later reads
  index NumPy arrays; otherwise every read fetches its records with one batched `__getitems__`.
  Thread-safe: batches are produced in a prefetch thread.
  """

  def __init__(self, source: Sequence[Any], keys: np.ndarray, *, image_key: str,
               label_key: str, image_shape: tuple[int, int, int], in_memory: bool):
    self._source = source
    self._keys = np.asarray(keys, np.int64)
    self._image_key, self._label_key = image_key, label_key
    self._image_shape = image_shape
    self._in_memory = in_memory
    self._arrays: tuple[np.ndarray, np.ndarray] | None = None
    self._lock = threading.Lock()
    self._batched = hasattr(source, "__getitems__")

  def __len__(self) -> int:
    return len(self._keys)

  @property
  def in_memory(self) -> bool:
    """Whether the split is decoded once and kept as NumPy arrays (small enough)."""
    return self._in_memory

  def read(self, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Images [B, H, W, C] uint8 and labels [B] int32 at `positions` (0 <= p < len(self))."""
    positions = np.asarray(positions, np.int64)
    if not self._in_memory:
      return self._decode(self._records(self._keys[positions]))
    with self._lock:
      if self._arrays is None:
        chunks = [self._decode(self._records(self._keys[i:i + _FILL_CHUNK]))
                  for i in range(0, len(self._keys), _FILL_CHUNK)] or [self._decode([])]
        self._arrays = (np.concatenate([c[0] for c in chunks]),
                        np.concatenate([c[1] for c in chunks]))
    images, labels = self._arrays
    return images[positions], labels[positions]

  def _records(self, keys: np.ndarray) -> Sequence[dict[str, Any]]:
    keys = [int(k) for k in keys]
    if self._batched:
      try:
        return self._source.__getitems__(keys)
      except TypeError:  # tfds.testing.mock_data's source; see the module docstring
        self._batched = False
    return [self._source[k] for k in keys]

  def _decode(self, records: Sequence[dict[str, Any]]) -> tuple[np.ndarray, np.ndarray]:
    images = np.empty((len(records), *self._image_shape), np.uint8)  # [B, H, W, C]
    for i, r in enumerate(records):
      images[i] = np.asarray(r[self._image_key], np.uint8).reshape(self._image_shape)
    labels = np.asarray([int(r[self._label_key]) for r in records], np.int32)
    return images, labels


@dataclasses.dataclass(frozen=True)
class Splits:
  """A dataset's three splits and what the model needs to know about them."""

  name: str
  num_classes: int
  image_shape: tuple[int, int, int]  # [H, W, C]
  readers: dict[str, SplitReader]  # 'train', 'validation', 'test'


def holdout_keys(n: int) -> tuple[np.ndarray, np.ndarray]:
  """Splits train records 0..n-1 into (validation, train) keys, both sorted.

  The validation part is a seeded (`HOLDOUT_SEED`) `HOLDOUT_FRACTION`, at least one record
  when n >= 2 and never all of them.
  """
  count = min(max(round(n * HOLDOUT_FRACTION), 1), max(n - 1, 0))
  held = np.zeros(n, bool)
  held[np.random.default_rng(HOLDOUT_SEED).permutation(n)[:count]] = True
  return np.flatnonzero(held), np.flatnonzero(~held)


def _open_sources(name: str, data_dir: str | None, download: bool,
                  source_dir: str | None) -> dict[str, Sequence[Any]]:
  """Split name -> tfds data source, preparing the dataset first if needed (and allowed)."""
  # Random access needs ArrayRecord; without this, tfds prepares TFRecord files whenever a
  # data_dir is given.
  builder_kwargs: dict[str, Any] = {"file_format": "array_record"}
  if name in _BUILDERS:
    name = _BUILDERS[name]
    builder_kwargs["source_dir"] = source_dir
    if not tfds.builder(name, data_dir=data_dir, **builder_kwargs).is_prepared():
      fashion_mnist.check_available(source_dir)  # one line, before tfds creates any folder
  kwargs = dict(data_dir=data_dir, download=download or base_name(name) in _OFFLINE
                or name in _BUILDERS.values(), builder_kwargs=builder_kwargs)
  if not (base_name(name) in _OFFLINE or name in _BUILDERS.values()):  # seconds, not minutes
    preparation.check_can_prepare(name, data_dir, download, kwargs["builder_kwargs"])
  sources = dict(tfds.data_source(name, **kwargs))
  if sources:
    return sources
  # No split names: either tfds.testing.mock_data, whose sources answer any split name, or a
  # dataset that is not prepared (download=False), whose sources raise KeyError.
  try:
    return {split: tfds.data_source(name, split=split, **kwargs) for split in ("train", "test")}
  except KeyError as err:
    where = data_dir or "the default tfds data_dir"
    raise ValueError(f"dataset {name!r} is not prepared in {where}; prepare it or pass "
                     "download=True") from err


def _image_and_label(info: tfds.core.DatasetInfo, name: str):
  """The image and label keys, image shape [H, W, C] and number of classes, checked."""
  keys = info.supervised_keys
  image_key, label_key = keys if keys and all(isinstance(k, str) for k in keys) else (
      "image", "label")
  features = info.features
  if image_key not in features or label_key not in features:
    raise ValueError(f"dataset {name!r} has no ({image_key!r}, {label_key!r}) features; "
                     f"it has {sorted(features.keys())}")
  image, label = features[image_key], features[label_key]
  shape = tuple(image.shape)
  if np.dtype(image.np_dtype) != np.uint8 or len(shape) not in (2, 3) or None in shape:
    raise ValueError(f"dataset {name!r}: feature {image_key!r} must be uint8 [H, W] or "
                     f"[H, W, C] of fixed size; it is {np.dtype(image.np_dtype)} {shape}")
  if not hasattr(label, "num_classes"):
    raise ValueError(f"dataset {name!r}: feature {label_key!r} is not a ClassLabel")
  image_shape = shape if len(shape) == 3 else (*shape, 1)  # [H, W] -> [H, W, 1]
  return image_key, label_key, tuple(int(d) for d in image_shape), int(label.num_classes)


def open_splits(name: str, *, data_dir: str | None = None, download: bool = True,
                source_dir: str | None = None) -> Splits:
  """Opens (and if needed prepares) dataset `name`; nothing is decoded until a split is read.

  Args:
    name: 'mnist5k' or any tfds name, optionally with config and version ('cifar10:3.0.2').
    data_dir: tfds data directory; None means tfds's default.
    download: whether tfds may download and prepare a missing dataset. mnist5k and
      fashion_mnist are always built when missing, since that needs no network.
    source_dir: folder with the original files of a dataset built from local files
      (fashion_mnist); None means where Debian's package puts them.

  Returns:
    The three splits with the dataset's class count and image shape.

  Raises:
    ValueError: for an unknown name (before any download or preparation), missing or damaged
      local source files, or a dataset without 'train' and 'test' splits or without uint8 images
      and class labels.
  """
  check_name(name)
  tfds.disable_progress_bar()
  sources = _open_sources(name, data_dir, download, source_dir)
  if "train" not in sources or "test" not in sources:
    raise ValueError(f"dataset {name!r} has splits {sorted(sources)}; quantjax needs 'train' "
                     "and 'test'")
  image_key, label_key, image_shape, num_classes = _image_and_label(
      sources["train"].dataset_info, name)

  def reader(split: str, keys: np.ndarray | None = None) -> SplitReader:
    source = sources[split]
    decoded_bytes = len(source) * math.prod(image_shape)
    return SplitReader(source, np.arange(len(source)) if keys is None else keys,
                       image_key=image_key, label_key=label_key, image_shape=image_shape,
                       in_memory=decoded_bytes < IN_MEMORY_BYTES)

  if "validation" in sources:
    readers = {split: reader(split) for split in SPLITS}
  else:
    validation, train = holdout_keys(len(sources["train"]))
    readers = {"train": reader("train", train), "validation": reader("train", validation),
               "test": reader("test")}
  return Splits(name=name, num_classes=num_classes, image_shape=image_shape, readers=readers)
