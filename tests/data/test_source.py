"""Dataset names, the validation hold-out, split readers, and real tfds names under mock_data."""

import os

import numpy as np
import pytest
import tensorflow_datasets as tfds

from quantjax import data
from quantjax.data import source, stats


@pytest.mark.parametrize("name, suggestion", [("mnsit", "'mnist'"), ("mnist_5k", "'mnist5k'"),
                                              ("cifar_10", "'cifar10'")])
def test_unknown_dataset_names_the_bad_value_and_close_matches(name, suggestion):
  with pytest.raises(ValueError) as err:
    data.get_dataset(name)
  message = str(err.value)
  assert f"{name!r}" in message and suggestion in message
  assert "tfds.list_builders()" in message and "\n" not in message


def test_unknown_dataset_fails_before_any_preparation(tmp_path, monkeypatch):
  calls = []
  monkeypatch.setattr(tfds, "data_source", lambda *a, **k: calls.append(a))
  monkeypatch.setattr(tfds, "builder", lambda *a, **k: calls.append(a))
  with pytest.raises(ValueError, match="'no_such_set'"):
    data.get_dataset("no_such_set", data_dir=str(tmp_path / "tfds"))
  assert calls == [] and not os.path.exists(tmp_path / "tfds")


def test_known_names_with_config_and_version_pass():
  for name in ["mnist5k", "mnist", "cifar10", "cifar10:3.0.2", "mnist/mnist:3.0.1"]:
    source.check_name(name)
  with pytest.raises(ValueError, match="None"):
    source.check_name(None)


def test_holdout_is_a_seeded_sorted_tenth():
  validation, train = source.holdout_keys(1000)
  assert len(validation) == 100 and len(train) == 900
  np.testing.assert_array_equal(np.sort(np.concatenate([validation, train])), np.arange(1000))
  assert (np.diff(validation) > 0).all() and (np.diff(train) > 0).all()
  again, _ = source.holdout_keys(1000)
  np.testing.assert_array_equal(validation, again)
  assert validation.max() > 900 and validation.min() < 100  # spread, not the first tenth
  assert [len(source.holdout_keys(n)[0]) for n in (1, 2, 60, 50000)] == [0, 1, 6, 5000]


class _FakeSource:
  """A data source of [H, W] uint8 images (no channel axis) that records its batched reads."""

  def __init__(self, n):
    self.images = np.arange(n * 12, dtype=np.uint8).reshape(n, 3, 4)
    self.calls = []

  def __len__(self):
    return len(self.images)

  def __getitem__(self, key):
    raise AssertionError("read one by one although __getitems__ exists")

  def __getitems__(self, keys):
    self.calls.append(list(keys))
    return [{"image": self.images[k], "label": k % 5} for k in keys]


@pytest.mark.parametrize("in_memory", [False, True])
def test_split_reader_maps_keys_adds_channel_and_reads_in_batches(in_memory):
  fake = _FakeSource(10)
  keys = np.array([1, 3, 4, 8, 9])  # e.g. a hold-out's train part
  reader = source.SplitReader(fake, keys, image_key="image", label_key="label",
                              image_shape=(3, 4, 1), in_memory=in_memory)
  assert len(reader) == 5
  for _ in range(2):
    images, labels = reader.read(np.array([4, 0, 2]))
    assert images.shape == (3, 3, 4, 1) and images.dtype == np.uint8 and labels.dtype == np.int32
    np.testing.assert_array_equal(images[..., 0], fake.images[[9, 1, 4]])
    np.testing.assert_array_equal(labels, [4, 1, 4])
  # Lazy: one batched read per call. In memory: the whole split once, then nothing.
  assert fake.calls == ([[1, 3, 4, 8, 9]] if in_memory else [[9, 1, 4], [9, 1, 4]])


def _mocked_records(name, split, n):
  source_ = tfds.data_source(name, split=split)
  return [source_[i] for i in range(n)]


@pytest.mark.parametrize("name, shape", [("mnist", (28, 28, 1)), ("cifar10", (32, 32, 3))])
def test_real_tfds_names_under_mock_data(name, shape, tmp_path):
  # mock_data mocks tfds.data_source (via as_data_source) with 60 random examples per split,
  # knows no split names (so validation is a hold-out of train) and ignores data_dir.
  with tfds.testing.mock_data(num_examples=60):
    ds = data.get_dataset(name, data_dir=str(tmp_path / "tfds"))
    spec = ds.spec
    assert spec.name == name and spec.num_classes == 10 and spec.image_shape == shape
    assert spec.split_sizes == {"train": 54, "validation": 6, "test": 60}
    assert (spec.mean, spec.std) == stats.KNOWN_STATS[name]
    mocked = _mocked_records(name, "train", 60)
  assert not os.path.exists(tmp_path / "tfds")

  mocked_images = np.stack([r["image"] for r in mocked]).reshape(60, *shape)
  by_bytes = {im.tobytes(): i for i, im in enumerate(mocked_images)}
  validation_keys, train_keys = source.holdout_keys(60)
  for split, keys in [("validation", validation_keys), ("train", train_keys)]:
    (batch,) = list(ds.eval_batches(split, batch_size=len(keys)))
    assert batch["image"].shape == (len(keys), *shape) and batch["image"].dtype == np.float32
    pixels = np.round((batch["image"] * np.asarray(spec.std) + np.asarray(spec.mean)) * 255)
    found = [by_bytes[p.astype(np.uint8).tobytes()] for p in pixels]
    np.testing.assert_array_equal(found, keys)  # exactly the hold-out's records, in order
    np.testing.assert_array_equal(batch["label"], [mocked[k]["label"] for k in keys])

  augment = "shift" if name == "mnist" else "crop_flip"
  batch = next(ds.train_batches(batch_size=8, seed=0, augment=augment))
  assert batch["image"].shape == (8, *shape) and batch["label"].shape == (8,)
  assert np.isfinite(batch["image"]).all() and ((0 <= batch["label"]) & (batch["label"] < 10)).all()


def test_unprepared_dataset_without_download_says_so(tmp_path):
  with pytest.raises(ValueError, match=r"'mnist' is not prepared in .*download=True"):
    data.get_dataset("mnist", data_dir=str(tmp_path / "tfds"), download=False)
