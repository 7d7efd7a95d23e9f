"""Augmentation: exact crops and flips against a per-image reference, determinism, speed."""


import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from quantjax.data import augment


def _reference(images, pad, rng, flip):
  """Per-image loop: pad, slice at the drawn offset, maybe mirror (same draw order as `apply`)."""
  b, h, w, _ = images.shape
  dy = rng.integers(0, 2 * pad + 1, size=b)
  dx = rng.integers(0, 2 * pad + 1, size=b)
  flips = rng.random(b) < 0.5 if flip else np.zeros(b, bool)
  out = np.empty_like(images)
  for i in range(b):
    padded = np.pad(images[i], ((pad, pad), (pad, pad), (0, 0)))
    crop = padded[dy[i]:dy[i] + h, dx[i]:dx[i] + w]
    out[i] = crop[:, ::-1] if flips[i] else crop
  return out


def _batch(shape, seed=0):
  return np.random.default_rng(seed).integers(1, 256, shape).astype(np.uint8)


@pytest.mark.parametrize("name, pad, flip, shape", [
    ("shift", 2, False, (64, 28, 28, 1)),
    ("crop_flip", 4, True, (64, 32, 32, 3)),
])
def test_matches_per_image_reference(name, pad, flip, shape):
  images = _batch(shape)
  out = augment.apply(images, name, np.random.default_rng(5))
  assert out.shape == shape and out.dtype == np.uint8 and out.flags.c_contiguous
  np.testing.assert_array_equal(out, _reference(images, pad, np.random.default_rng(5), flip))
  np.testing.assert_array_equal(images, _batch(shape))  # input untouched


def test_none_is_the_identity():
  images = _batch((4, 28, 28, 1))
  assert augment.apply(images, "none", np.random.default_rng(0)) is images


def test_shift_covers_every_offset_and_keeps_digits_unflipped():
  # One bright pixel at the centre of a black image: its position reveals the offset.
  images = np.zeros((2000, 28, 28, 1), np.uint8)
  images[:, 14, 14] = 255
  out = augment.apply(images, "shift", np.random.default_rng(1))
  ys, xs = np.nonzero(out[..., 0].max(axis=2) > 0)[1], np.nonzero(out[..., 0].max(axis=1) > 0)[1]
  assert set(ys - 14) == set(range(-2, 3)) and set(xs - 14) == set(range(-2, 3))
  assert (out.reshape(2000, -1).sum(axis=1) == 255).all()  # never cropped away, never doubled


def test_crop_flip_flips_about_half():
  # A band that brightens to the right, far enough from the edges to survive any 4 px shift.
  images = np.zeros((4000, 16, 16, 1), np.uint8)
  images[:, :, 6:10, 0] = [10, 20, 30, 40]
  out = augment.apply(images, "crop_flip", np.random.default_rng(2))[:, 8, :, 0]  # [B, W]
  band = out[out > 0].reshape(4000, 4).astype(int)
  flipped = (np.diff(band, axis=1) < 0).all(axis=1)
  assert ((np.diff(band, axis=1) > 0).all(axis=1) ^ flipped).all()  # each one way or the other
  assert 0.47 < flipped.mean() < 0.53


def test_same_generator_state_same_output():
  images = _batch((16, 32, 32, 3))
  a = augment.apply(images, "crop_flip", np.random.default_rng([3, 1]))
  b = augment.apply(images, "crop_flip", np.random.default_rng([3, 1]))
  c = augment.apply(images, "crop_flip", np.random.default_rng([3, 2]))
  np.testing.assert_array_equal(a, b)
  assert not np.array_equal(a, c)


def test_unknown_augmentation_names_value_and_choices():
  with pytest.raises(ValueError, match=r"'flip'.*none, shift, shift_flip, crop_flip"):
    augment.apply(_batch((1, 4, 4, 1)), "flip", np.random.default_rng(0))


@settings(max_examples=40, deadline=None)
@given(b=st.integers(1, 5), h=st.integers(1, 9), w=st.integers(1, 9), c=st.integers(1, 3),
       pad=st.integers(0, 4), seed=st.integers(0, 2**32 - 1))
def test_random_crop_equals_reference_for_any_shape(b, h, w, c, pad, seed):
  images = _batch((b, h, w, c), seed % 1000)
  out = augment.random_crop(images, pad, np.random.default_rng(seed))
  np.testing.assert_array_equal(out, _reference(images, pad, np.random.default_rng(seed), False))


@pytest.mark.parametrize("name", ["none", "shift", "shift_flip", "crop_flip"])
def test_rows_augmented_alone_equal_those_rows_of_the_whole_batch(name):
  # A process holding rows 16-47 of a 64-image batch draws for all 64 and applies its rows.
  images = _batch((64, 12, 12, 1))
  whole = augment.apply(images, name, np.random.default_rng([7, 0, 3, 1]))
  draws = augment.draw(name, 64, np.random.default_rng([7, 0, 3, 1]))
  rows = slice(16, 48)
  part = augment.apply_drawn(images[rows], name, None if draws is None else draws.rows(rows))
  np.testing.assert_array_equal(part, whole[rows])
  if name != "none":
    assert not np.array_equal(part, augment.apply(images[rows], name,
                                                  np.random.default_rng([7, 0, 3, 1])))
