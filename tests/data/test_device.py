"""The device input pipeline: jitted augmentation against its definition, epochs, resumption."""

import itertools

import jax
import numpy as np
import pytest

from quantjax.data import device


def _take(iterator, n):
  return [jax.device_get(b) for b in itertools.islice(iterator, n)]


def _crops(image, pad):
  """Every crop of `image` zero-padded by `pad`: the set a shift may produce."""
  h, w, c = image.shape
  padded = np.zeros((h + 2 * pad, w + 2 * pad, c), image.dtype)
  padded[pad:pad + h, pad:pad + w] = image
  return [padded[dy:dy + h, dx:dx + w] for dy in range(2 * pad + 1) for dx in range(2 * pad + 1)]


@pytest.mark.parametrize("name, pad, flips", [("shift", 2, False), ("shift_flip", 2, True),
                                              ("crop_flip", 4, True)])
def test_augment_is_a_crop_of_the_padded_image_and_maybe_a_mirror(name, pad, flips):
  images = np.random.default_rng(0).integers(1, 256, (64, 12, 10, 1), dtype=np.uint8)
  out = np.asarray(device.augment(jax.numpy.asarray(images), name, jax.random.key(3)))
  assert out.shape == images.shape and out.dtype == np.uint8
  mirrored = 0
  for image, result in zip(images, out, strict=True):
    plain = any(np.array_equal(result, c) for c in _crops(image, pad))
    mirror = any(np.array_equal(result, c) for c in _crops(image[:, ::-1], pad))
    assert plain or mirror
    mirrored += mirror and not plain
  if flips:
    assert 16 < mirrored < 48  # about half of 64
  else:
    assert mirrored == 0
  np.testing.assert_array_equal(device.augment(images, "none", jax.random.key(3)), images)


def test_an_epoch_visits_every_example_once_with_its_label(mnist5k, denormalise):
  images, labels = mnist5k.raw("train")
  key = {im.tobytes(): i for i, im in enumerate(images)}
  batches = _take(mnist5k.train_batches(batch_size=500, seed=2, augment="none",
                                        pipeline="device"), 7)  # 3,500 = 7 x 500: one epoch
  seen = []
  for b in batches:
    pixels = denormalise(mnist5k, b["image"])
    index = np.asarray([key[im.tobytes()] for im in pixels])
    np.testing.assert_array_equal(b["label"], labels[index])
    seen.append(index)
  assert len(np.unique(np.concatenate(seen))) == 3500


def test_device_batches_are_a_pure_function_of_seed_and_step(mnist5k):
  kwargs = dict(batch_size=1000, augment="shift_flip", pipeline="device")  # 3 steps per epoch
  run = _take(mnist5k.train_batches(seed=0, **kwargs), 7)
  other = _take(mnist5k.train_batches(seed=1, **kwargs), 1)
  assert not np.array_equal(run[0]["label"], other[0]["label"])
  assert not np.array_equal(run[0]["image"], run[3]["image"])  # epochs are reshuffled
  for start in (2, 3, 5):
    resumed = _take(mnist5k.train_batches(seed=0, start_step=start, **kwargs), 7 - start)
    for a, b in zip(run[start:], resumed, strict=True):
      np.testing.assert_array_equal(a["image"], b["image"])
      np.testing.assert_array_equal(a["label"], b["label"])


def test_device_batches_are_normalised_like_the_host_ones(mnist5k, denormalise):
  dev = next(mnist5k.train_batches(batch_size=64, seed=0, augment="none", pipeline="device"))
  assert dev["image"].dtype == np.float32 and dev["label"].dtype == np.int32
  pixels = denormalise(mnist5k, np.asarray(dev["image"]))  # asserts whole pixel values
  np.testing.assert_allclose(mnist5k.normalise(pixels), dev["image"], rtol=0, atol=1e-6)


def test_pipeline_choice(mnist5k):
  assert mnist5k.pipeline_for("train", "auto") == "device"  # 3,500 digits are held in memory
  assert mnist5k.pipeline_for("train", "host") == "host"
  with pytest.raises(ValueError, match="input_pipeline='gpu'.*host, device, auto"):
    mnist5k.pipeline_for("train", "gpu")
