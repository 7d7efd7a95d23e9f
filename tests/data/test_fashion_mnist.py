"""The Fashion-MNIST builder: IDX parsing and checks on files the tests write, the split, the real
files when Debian's package is installed."""

import gzip
import hashlib
import os

import numpy as np
import pytest

from quantjax.data import fashion_mnist as fm
from quantjax.data import get_dataset

# A small stand-in for the four files: 30 train and 10 test images, 3 per class in train.
TRAIN, TEST = 30, 10


def _idx(array: np.ndarray, magic: int) -> bytes:
  header = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in array.shape)
  return header + array.astype(np.uint8).tobytes()


def _arrays(seed=0):
  rng = np.random.default_rng(seed)
  return {
      "train-images-idx3-ubyte": rng.integers(0, 256, (TRAIN, 28, 28)),
      "train-labels-idx1-ubyte": np.arange(TRAIN) % 10,
      "t10k-images-idx3-ubyte": rng.integers(0, 256, (TEST, 28, 28)),
      "t10k-labels-idx1-ubyte": (np.arange(TEST) * 3) % 10,
  }


def _write(directory, arrays, gz=True, edit=None):
  """Writes the four files; `edit` maps a stem to a function of its bytes (to damage one)."""
  files = {}
  for stem, array in arrays.items():
    magic = 2051 if "images" in stem else 2049
    data = _idx(array, magic)
    files[stem] = (magic, len(array), hashlib.sha256(data).hexdigest())
    if edit and stem in edit:
      data = edit[stem](data)
    path = os.path.join(directory, stem + (".gz" if gz else ""))
    with open(path, "wb") as f:
      f.write(gzip.compress(data) if gz else data)
  return files


@pytest.mark.parametrize("gz", [True, False])
def test_load_files_reads_back_what_was_written(tmp_path, gz):
  arrays = _arrays()
  files = _write(str(tmp_path), arrays, gz=gz)
  loaded = fm.load_files(str(tmp_path), files)
  for stem, array in arrays.items():
    np.testing.assert_array_equal(loaded[stem], array)
    assert loaded[stem].dtype == np.uint8


@pytest.mark.parametrize("edit, message", [
    (lambda d: d[:-100], "is truncated|expected"),  # images cut short
    (lambda d: d[:10], "truncated"),  # inside the header
    (lambda d: (2049).to_bytes(4, "big") + d[4:], "magic number 2049, expected 2051"),
    (lambda d: d[:4] + (29).to_bytes(4, "big") + d[8:], "holds 29 items, expected 30"),
    (lambda d: d[:8] + (27).to_bytes(4, "big") + d[12:], "27x28 images"),
    (lambda d: d[:-1] + bytes([d[-1] ^ 1]), "another SHA-256"),  # one bit flipped
])
def test_a_damaged_images_file_is_one_line_error(tmp_path, edit, message):
  files = _write(str(tmp_path), _arrays(), edit={"train-images-idx3-ubyte": edit})
  with pytest.raises(fm.FilesError, match=message) as err:
    fm.load_files(str(tmp_path), files)
  assert "\n" not in str(err.value)
  assert "train-images-idx3-ubyte" in str(err.value)


def test_label_outside_the_classes_is_refused(tmp_path):
  arrays = _arrays()
  arrays["t10k-labels-idx1-ubyte"] = np.full(TEST, 10)
  files = _write(str(tmp_path), arrays)
  with pytest.raises(fm.FilesError, match="label 10, outside 0..9"):
    fm.load_files(str(tmp_path), files)


def test_corrupt_gzip_is_one_line_error(tmp_path):
  files = _write(str(tmp_path), _arrays())
  path = tmp_path / "t10k-labels-idx1-ubyte.gz"
  path.write_bytes(path.read_bytes()[:20])  # a truncated gzip stream
  with pytest.raises(fm.FilesError, match="cannot read .*t10k-labels") as err:
    fm.load_files(str(tmp_path), files)
  assert "\n" not in str(err.value)


def test_missing_file_says_where_it_looked_and_how_to_get_them(tmp_path):
  files = _write(str(tmp_path), _arrays())
  os.remove(tmp_path / "t10k-images-idx3-ubyte.gz")
  with pytest.raises(fm.FilesError) as err:
    fm.load_files(str(tmp_path), files)
  message = str(err.value)
  assert "\n" not in message and str(tmp_path) in message
  assert "apt-get install dataset-fashion-mnist" in message and "config.source_dir" in message


def test_the_real_checksums_refuse_other_files(tmp_path):
  _write(str(tmp_path), _arrays())
  with pytest.raises(fm.FilesError, match="holds 30 items, expected 60000"):
    fm.load_files(str(tmp_path))


def test_validation_split_is_stratified_seeded_and_disjoint():
  labels = np.random.default_rng(3).integers(0, 10, 5000)
  val = fm.validation_indices(labels, per_class=40)
  assert len(val) == 400 and len(np.unique(val)) == 400 and np.all(np.diff(val) > 0)
  np.testing.assert_array_equal(np.bincount(labels[val], minlength=10), np.full(10, 40))
  np.testing.assert_array_equal(val, fm.validation_indices(labels, per_class=40))
  assert not np.array_equal(val, fm.validation_indices(labels, per_class=40, seed=1))


def test_dataset_by_name_from_a_folder_of_files(tmp_path, monkeypatch):
  """`fashion_mnist` built offline from a folder the user names: splits, images, labels."""
  source = tmp_path / "files"
  source.mkdir()
  arrays = _arrays()
  files = _write(str(source), arrays)
  monkeypatch.setattr(fm, "FILES", files)
  monkeypatch.setattr(fm, "VALIDATION_PER_CLASS", 1)
  ds = get_dataset("fashion_mnist", data_dir=str(tmp_path / "tfds"), source_dir=str(source))
  assert ds.spec.split_sizes == {"train": 20, "validation": 10, "test": 10}
  assert ds.spec.image_shape == (28, 28, 1) and ds.spec.num_classes == 10
  test_images, test_labels = ds.raw("test")
  order = np.argsort(test_labels * 0 + np.arange(TEST))  # the split keeps file order by key
  np.testing.assert_array_equal(np.sort(test_labels), np.sort(arrays["t10k-labels-idx1-ubyte"]))
  # Every test image is one of the file's, with its own label.
  file_images = arrays["t10k-images-idx3-ubyte"].astype(np.uint8)
  for image, label in zip(test_images[order], test_labels[order], strict=True):
    i = next(j for j in range(TEST) if np.array_equal(file_images[j], image[..., 0]))
    assert arrays["t10k-labels-idx1-ubyte"][i] == label
  _, val_labels = ds.raw("validation")
  np.testing.assert_array_equal(np.bincount(val_labels, minlength=10), np.ones(10))


def test_missing_files_fail_before_tfds_writes_anything(tmp_path):
  data_dir = tmp_path / "tfds"
  with pytest.raises(ValueError, match="not found in .*empty") as err:
    get_dataset("fashion_mnist", data_dir=str(data_dir), source_dir=str(tmp_path / "empty"))
  assert "\n" not in str(err.value)
  assert not (data_dir / fm.NAME).exists()


@pytest.mark.skipif(not os.path.isdir(fm.DEBIAN_DIR),
                    reason="Debian's dataset-fashion-mnist is not installed "
                    "(apt-get install dataset-fashion-mnist)")
def test_the_real_files_pass_their_checks():
  arrays = fm.load_files(fm.DEBIAN_DIR)
  assert arrays["train-images-idx3-ubyte"].shape == (60000, 28, 28)
  assert arrays["t10k-images-idx3-ubyte"].shape == (10000, 28, 28)
  train_labels = arrays["train-labels-idx1-ubyte"]
  np.testing.assert_array_equal(np.bincount(train_labels), np.full(10, 6000))
  np.testing.assert_array_equal(np.bincount(arrays["t10k-labels-idx1-ubyte"]), np.full(10, 1000))
  val = fm.validation_indices(train_labels)
  assert len(val) == 6000
  # The pixel mean and std that normalisation uses (data/stats.py) are the train split's.
  pixels = arrays["train-images-idx3-ubyte"] / 255.0
  assert pixels.mean() == pytest.approx(0.2860, abs=5e-4)
  assert pixels.std() == pytest.approx(0.3530, abs=5e-4)
