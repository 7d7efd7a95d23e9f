"""Normalisation statistics: known per dataset, otherwise estimated from the train split."""

import numpy as np
import pytest

from quantjax.data import source, stats


class _ListSource(list):
  pass


def _reader(images):
  records = _ListSource({"image": im, "label": 0} for im in images)
  return source.SplitReader(records, np.arange(len(records)), image_key="image",
                            label_key="label", image_shape=images.shape[1:], in_memory=True)


def test_known_statistics_ignore_config_and_version():
  reader = _reader(np.zeros((3, 2, 2, 3), np.uint8))
  assert stats.channel_stats("cifar10:3.0.2", reader) == stats.KNOWN_STATS["cifar10"]
  assert stats.channel_stats("mnist5k", reader) == ((0.1307,), (0.3081,))


def test_unknown_dataset_statistics_come_from_the_first_1000_train_images():
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (1200, 4, 4, 2)).astype(np.uint8)
  images[:1000, ..., 1] = 51  # constant channel over the sample: std floored, not zero
  mean, std = stats.channel_stats("some_tfds_set", _reader(images))
  sample = images[:1000] / 255.0
  np.testing.assert_allclose(mean, sample.mean(axis=(0, 1, 2)), rtol=1e-12)
  assert mean[1] == pytest.approx(0.2, abs=1e-12) and std[1] == 1e-3
  np.testing.assert_allclose(std[0], sample[..., 0].std(), rtol=1e-12)


def test_normaliser_is_x_over_255_minus_mean_over_std():
  images = np.arange(256, dtype=np.uint8).reshape(1, 16, 16, 1).repeat(3, axis=-1)
  mean, std = (0.1, 0.5, 0.9), (0.2, 0.25, 0.3)
  out = stats.Normaliser(mean, std)(images)
  assert out.dtype == np.float32
  np.testing.assert_allclose(out, (images / 255.0 - np.array(mean)) / np.array(std), atol=1e-6)
