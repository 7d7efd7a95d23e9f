"""Dataset on mnist5k: spec, evaluation coverage and padding, seeded resumable training batches."""

import itertools

import numpy as np
import pytest

from quantjax import data
from quantjax.data import source


def _take(iterator, n):
  return list(itertools.islice(iterator, n))


def _all_images(ds, split, denormalise):
  (batch,) = list(ds.eval_batches(split, batch_size=ds.num_examples(split)))
  return denormalise(ds, batch["image"]), batch["label"]


def test_spec(mnist5k):
  assert mnist5k.spec == data.DatasetSpec(
      name="mnist5k", num_classes=10, image_shape=(28, 28, 1),
      split_sizes={"train": 3500, "validation": 500, "test": 1000},
      mean=(0.1307,), std=(0.3081,))
  assert [mnist5k.num_examples(s) for s in data.SPLITS] == [3500, 500, 1000]


def test_eval_batches_cover_every_example_once_with_padding(mnist5k, mnist5k_records,
                                                            denormalise):
  batches = list(mnist5k.eval_batches("validation", batch_size=192))  # 500 = 192 + 192 + 116
  assert len(batches) == 3
  for b in batches:
    assert b["image"].shape == (192, 28, 28, 1) and b["image"].dtype == np.float32
    assert b["label"].dtype == np.int32 and b["mask"].dtype == np.float32
  masks = np.concatenate([b["mask"] for b in batches])
  np.testing.assert_array_equal(masks, np.r_[np.ones(500), np.zeros(76)])
  images = denormalise(mnist5k, np.concatenate([b["image"] for b in batches]))
  labels = np.concatenate([b["label"] for b in batches])
  stored_images, stored_labels, _ = mnist5k_records["validation"]
  np.testing.assert_array_equal(images[:500], stored_images)  # in stored order, each once
  np.testing.assert_array_equal(labels[:500], stored_labels)
  assert (images[500:] == 0).all() and (labels[500:] == 0).all()  # padding: black, label 0


def test_raw_gives_the_stored_uint8_digits_in_split_order(mnist5k, mnist5k_records):
  stored_images, stored_labels, _ = mnist5k_records["validation"]
  images, labels = mnist5k.raw("validation")
  assert images.dtype == np.uint8 and images.shape == (500, 28, 28, 1)
  np.testing.assert_array_equal(images, stored_images)
  np.testing.assert_array_equal(labels, stored_labels)
  some, some_labels = mnist5k.raw("validation", [3, 0])
  np.testing.assert_array_equal(some, stored_images[[3, 0]])
  np.testing.assert_array_equal(some_labels, stored_labels[[3, 0]])
  with pytest.raises(ValueError, match="'tset'"):
    mnist5k.raw("tset")


def test_train_epoch_is_the_documented_permutation(mnist5k, denormalise):
  images, labels = _all_images(mnist5k, "train", denormalise)
  order = np.random.default_rng([4, 1]).permutation(3500)  # epoch 1 of seed 4
  batches = _take(mnist5k.train_batches(batch_size=128, seed=4, start_step=27), 27)
  seen = []
  for i, b in enumerate(batches):
    positions = np.sort(order[i * 128:(i + 1) * 128])
    np.testing.assert_array_equal(denormalise(mnist5k, b["image"]), images[positions])
    np.testing.assert_array_equal(b["label"], labels[positions])
    seen.append(positions)
  seen = np.concatenate(seen)
  assert len(np.unique(seen)) == 27 * 128  # no repeats; the ragged 44 are dropped


def test_train_batches_are_a_pure_function_of_seed_and_step(mnist5k):
  kwargs = dict(batch_size=1000, augment="shift")  # 3 steps per epoch: resumes cross epochs
  run = _take(mnist5k.train_batches(seed=0, **kwargs), 8)
  again = _take(mnist5k.train_batches(seed=0, **kwargs), 8)
  other = _take(mnist5k.train_batches(seed=1, **kwargs), 1)
  for a, b in zip(run, again, strict=True):
    np.testing.assert_array_equal(a["image"], b["image"])
    np.testing.assert_array_equal(a["label"], b["label"])
  assert not np.array_equal(run[0]["label"], other[0]["label"])
  assert not np.array_equal(run[0]["image"], run[3]["image"])  # epochs are reshuffled
  for start in (2, 3, 5):
    resumed = _take(mnist5k.train_batches(seed=0, start_step=start, **kwargs), 8 - start)
    for a, b in zip(run[start:], resumed, strict=True):
      np.testing.assert_array_equal(a["image"], b["image"])
      np.testing.assert_array_equal(a["label"], b["label"])


def test_none_is_identity_up_to_normalisation_and_shift_moves_the_same_digits(mnist5k,
                                                                             denormalise):
  images, _ = _all_images(mnist5k, "train", denormalise)
  plain = next(mnist5k.train_batches(batch_size=64, seed=9, augment="none"))
  shifted = next(mnist5k.train_batches(batch_size=64, seed=9, augment="shift"))
  positions = np.sort(np.random.default_rng([9, 0]).permutation(3500)[:64])
  expected = (images[positions] / 255.0 - 0.1307) / 0.3081
  np.testing.assert_allclose(plain["image"], expected, atol=1e-5)
  np.testing.assert_array_equal(plain["label"], shifted["label"])
  moved = denormalise(mnist5k, shifted["image"])
  assert shifted["image"].shape == (64, 28, 28, 1) and shifted["image"].dtype == np.float32
  assert not np.array_equal(moved, images[positions])
  for original, out in zip(images[positions], moved, strict=True):
    padded = np.pad(original, ((2, 2), (2, 2), (0, 0)))
    assert any(np.array_equal(out, padded[dy:dy + 28, dx:dx + 28])
               for dy in range(5) for dx in range(5))


def test_train_on_another_split(mnist5k, denormalise):
  images, _ = _all_images(mnist5k, "validation", denormalise)
  batch = next(mnist5k.train_batches(batch_size=100, seed=0, split="validation"))
  positions = np.sort(np.random.default_rng([0, 0]).permutation(500)[:100])
  np.testing.assert_array_equal(denormalise(mnist5k, batch["image"]), images[positions])


@pytest.mark.parametrize("call", [
    lambda ds: ds.num_examples("val"),
    lambda ds: ds.eval_batches("val", batch_size=10),
    lambda ds: ds.train_batches(batch_size=10, seed=0, split="val"),
])
def test_unknown_split_raises_at_once_listing_valid_splits(mnist5k, call):
  with pytest.raises(ValueError, match=r"'val'.*train, validation, test"):
    call(mnist5k)


def test_bad_training_arguments_raise_at_once(mnist5k):
  with pytest.raises(ValueError, match=r"augment='cutout'.*none, shift, shift_flip, crop_flip"):
    mnist5k.train_batches(batch_size=10, seed=0, augment="cutout")
  with pytest.raises(ValueError, match="batch_size=4000 exceeds the 3500"):
    mnist5k.train_batches(batch_size=4000, seed=0)
  with pytest.raises(ValueError, match="batch_size=0"):
    mnist5k.eval_batches("test", batch_size=0)
  with pytest.raises(ValueError, match="start_step=-1"):
    mnist5k.train_batches(batch_size=10, seed=0, start_step=-1)


def test_large_dataset_path_reads_array_record_batches_lazily(mnist5k, data_dir, monkeypatch):
  # Above IN_MEMORY_BYTES a split is never cached: every batch is one __getitems__ on the
  # ArrayRecord source. The batches must not depend on which path served them.
  monkeypatch.setattr(source, "IN_MEMORY_BYTES", 0)
  lazy = data.get_dataset("mnist5k", data_dir=data_dir)
  kwargs = dict(batch_size=256, seed=2, augment="shift", start_step=12)
  for a, b in zip(_take(lazy.train_batches(**kwargs), 3), _take(mnist5k.train_batches(**kwargs), 3),
                  strict=True):
    np.testing.assert_array_equal(a["image"], b["image"])
    np.testing.assert_array_equal(a["label"], b["label"])
  for a, b in zip(lazy.eval_batches("test", batch_size=300),
                  mnist5k.eval_batches("test", batch_size=300), strict=True):
    for key in ("image", "label", "mask"):
      np.testing.assert_array_equal(a[key], b[key])
  assert lazy._readers["train"]._arrays is None and lazy._readers["test"]._arrays is None
  assert mnist5k._readers["train"]._arrays is not None  # small: cached on the first read
