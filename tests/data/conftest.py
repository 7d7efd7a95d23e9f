"""Shared fixtures for the data tests: mnist5k, built once per session."""

import numpy as np
import pytest
import tensorflow_datasets as tfds

from quantjax import data
from quantjax.data import mnist5k as mnist5k_lib


@pytest.fixture(scope="session")
def mnist5k(data_dir):
  """The mnist5k Dataset, prepared into the session's tmp data_dir (about 4 s, once)."""
  return data.get_dataset("mnist5k", data_dir=data_dir)


@pytest.fixture(scope="session")
def digits():
  """The shipped 5,000 digits: uint8 images [5000, 28, 28, 1], int64 labels [5000]."""
  return mnist5k_lib.load_digits()


@pytest.fixture(scope="session")
def mnist5k_records(mnist5k, data_dir, digits):
  """Split -> (images uint8 [N, 28, 28, 1], labels [N], index in the digits [N]) as stored."""
  del mnist5k  # only needed prepared
  digits, _ = digits
  index_of = {image.tobytes(): i for i, image in enumerate(digits)}  # the 5,000 are all distinct
  out = {}
  for split, source in tfds.data_source("mnist5k", data_dir=data_dir, download=False).items():
    records = source.__getitems__(list(range(len(source))))
    images = np.stack([r["image"] for r in records])
    labels = np.asarray([r["label"] for r in records])
    out[split] = (images, labels, np.asarray([index_of[im.tobytes()] for im in images]))
  return out


@pytest.fixture
def denormalise():
  """`denormalise(dataset, images)`: normalised float32 images back to uint8 pixel values.

  Asserts that they are whole pixel values (up to float rounding) on the way.
  """

  def undo(dataset, images):
    spec = dataset.spec
    pixels = (images * np.asarray(spec.std) + np.asarray(spec.mean)) * 255.0
    np.testing.assert_allclose(pixels, np.round(pixels), atol=1e-3)
    return np.round(pixels).astype(np.uint8)

  return undo
