"""`fashion_mnist`: Zalando's Fashion-MNIST from its four original IDX files, offline.

Xiao, Rasul, Vollgraf, "Fashion-MNIST: a Novel Image Dataset for Benchmarking Machine Learning
Algorithms", arXiv:1708.07747, 2017 (MIT licence). 60,000 train and 10,000 test 28×28 grey images
of 10 clothing classes.

quantjax does not download it: the builder reads the four files

    train-images-idx3-ubyte.gz  train-labels-idx1-ubyte.gz
    t10k-images-idx3-ubyte.gz   t10k-labels-idx1-ubyte.gz

(gzipped or not) from `source_dir` (`config.source_dir`), or, when that is empty, from where
Debian's package `dataset-fashion-mnist` installs them (`/usr/share/datasets/fashion-mnist`;
`apt-get install dataset-fashion-mnist`). Each file is checked before anything is written: the
SHA-256 of its uncompressed bytes (so Zalando's downloads and Debian's re-compressed copies both
pass), the IDX magic number, the count (60,000 / 10,000) and the shape (28×28), and every label in
0..9. A missing or damaged file is a one-line error saying where the builder looked and how to get
the files.

Splits: `test` is the original 10,000 test images, untouched. `validation` is 6,000 images carved
from the original train split, stratified (600 per class) and drawn with `SPLIT_SEED`; `train` is
the other 54,000. The seed is part of the dataset's definition: changing it is a new VERSION.
Images are uint8 `tfds.features.Tensor`s in ArrayRecord files, as for mnist5k.

tfds has its own `fashion_mnist` builder, which downloads and needs TensorFlow to encode images;
quantjax's name `fashion_mnist` means this one (registered with tfds as `fashion_mnist_idx`).
"""

from __future__ import annotations

import gzip
import hashlib
import os
from collections.abc import Mapping

import numpy as np
import tensorflow_datasets as tfds

NAME = "fashion_mnist_idx"
DEBIAN_DIR = "/usr/share/datasets/fashion-mnist"
HOW_TO_GET = ("install Debian's package (apt-get install dataset-fashion-mnist) or put the four "
              "original files (train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, "
              "t10k-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz) in a folder and set "
              "config.source_dir to it")
# File stem -> (IDX magic number, count, SHA-256 of the uncompressed bytes).
FILES = {
    "train-images-idx3-ubyte": (
        2051, 60000, "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888"),
    "train-labels-idx1-ubyte": (
        2049, 60000, "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9"),
    "t10k-images-idx3-ubyte": (
        2051, 10000, "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b"),
    "t10k-labels-idx1-ubyte": (
        2049, 10000, "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34"),
}
IMAGE_SHAPE = (28, 28)
NUM_CLASSES = 10
CLASS_NAMES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
               "Sneaker", "Bag", "Ankle boot")
SPLIT_SEED = 20261130
VALIDATION_PER_CLASS = 600  # 6,000 validation images, carved from the original train split


class FilesError(ValueError):
  """A missing or damaged source file; the message is one line."""


def find_file(directory: str, stem: str) -> str:
  """`directory/stem.gz` or `directory/stem`, whichever exists.

  Raises:
    FilesError: neither exists.
  """
  for candidate in (os.path.join(directory, stem + ".gz"), os.path.join(directory, stem)):
    if os.path.isfile(candidate):
      return candidate
  raise FilesError(f"Fashion-MNIST file {stem}(.gz) not found in {directory}; {HOW_TO_GET}")


def read_bytes(path: str) -> bytes:
  """The file's uncompressed bytes (gunzipped when it is gzip).

  Raises:
    FilesError: unreadable, or a truncated/corrupt gzip stream.
  """
  try:
    with open(path, "rb") as f:
      data = f.read()
    return gzip.decompress(data) if data[:2] == b"\x1f\x8b" else data
  except (OSError, EOFError, gzip.BadGzipFile) as e:
    raise FilesError(f"cannot read {path} ({type(e).__name__}: {e}); {HOW_TO_GET}") from None


def parse_idx(data: bytes, *, magic: int, count: int, path: str) -> np.ndarray:
  """An IDX file's uint8 array: [count] for labels (magic 2049), [count, H, W] for images (2051).

  Raises:
    FilesError: wrong magic number, count, image shape or length.
  """
  ndim = magic & 0xFF
  header = 4 + 4 * ndim
  if len(data) < header:
    raise FilesError(f"{path} is truncated: {len(data)} bytes, shorter than its IDX header")
  found_magic = int.from_bytes(data[:4], "big")
  if found_magic != magic:
    raise FilesError(f"{path} has IDX magic number {found_magic}, expected {magic} "
                     "(not the right Fashion-MNIST file)")
  dims = [int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim)]
  if dims[0] != count:
    raise FilesError(f"{path} holds {dims[0]} items, expected {count}")
  if ndim == 3 and tuple(dims[1:]) != IMAGE_SHAPE:
    raise FilesError(f"{path} holds {dims[1]}x{dims[2]} images, expected "
                     f"{IMAGE_SHAPE[0]}x{IMAGE_SHAPE[1]}")
  expected = header + int(np.prod(dims))
  if len(data) != expected:
    raise FilesError(f"{path} is {len(data)} bytes, expected {expected} for {count} items "
                     "(truncated or padded)")
  return np.frombuffer(data, np.uint8, offset=header).reshape(dims)


def load_files(directory: str, files: Mapping[str, tuple[int, int, str | None]] | None = None
               ) -> dict[str, np.ndarray]:
  """The four arrays, each checked: {'train-images-idx3-ubyte': uint8 [60000, 28, 28], ...}.

  Args:
    directory: folder holding the files (gzipped or not).
    files: stem -> (magic, count, SHA-256 of the uncompressed bytes or None to skip it); None
      means `FILES`, the originals. Tests pass small files of their own.

  Raises:
    FilesError: a file is missing, unreadable, has another checksum, magic, count or shape, or
      a label outside 0..9.
  """
  arrays = {}
  for stem, (magic, count, sha256) in (FILES if files is None else files).items():
    path = find_file(directory, stem)
    data = read_bytes(path)
    array = parse_idx(data, magic=magic, count=count, path=path)
    if sha256 is not None and hashlib.sha256(data).hexdigest() != sha256:
      raise FilesError(f"{path} has another SHA-256 than the original Fashion-MNIST file "
                       f"(damaged or a different dataset); {HOW_TO_GET}")
    if magic == 2049 and array.size and int(array.max()) >= NUM_CLASSES:
      raise FilesError(f"{path} has label {int(array.max())}, outside 0..{NUM_CLASSES - 1}")
    arrays[stem] = array
  return arrays


def source_directory(source_dir: str | None) -> str:
  """The folder to read: `source_dir` if given, else Debian's."""
  return source_dir or DEBIAN_DIR


def check_available(source_dir: str | None) -> None:
  """Raises a one-line FilesError unless all four files exist (cheap: no reading)."""
  directory = source_directory(source_dir)
  for stem in FILES:
    find_file(directory, stem)


def validation_indices(labels: np.ndarray, per_class: int | None = None,
                       seed: int = SPLIT_SEED) -> np.ndarray:
  """Sorted indices into the original train split that form 'validation': `per_class` (default
  `VALIDATION_PER_CLASS`) of each class, drawn with `seed`."""
  per_class = VALIDATION_PER_CLASS if per_class is None else per_class
  rng = np.random.default_rng(seed)
  picks = [rng.permutation(np.flatnonzero(labels == c))[:per_class]
           for c in range(NUM_CLASSES)]
  return np.sort(np.concatenate(picks))


class FashionMnistIdx(tfds.core.GeneratorBasedBuilder):
  """Fashion-MNIST from the original IDX files: 54,000 / 6,000 (stratified) / 10,000."""

  name = NAME
  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Original IDX files; 6,000 stratified, seeded validation images."}

  def __init__(self, *, file_format=None, source_dir: str | None = None, **kwargs):
    self._source_dir = source_dir
    # ArrayRecord unless told otherwise: TFRecord files would need TensorFlow to be read.
    super().__init__(file_format=file_format or "array_record", **kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
        description=__doc__,
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Tensor(shape=(*IMAGE_SHAPE, 1), dtype=np.uint8),
            "label": tfds.features.ClassLabel(names=CLASS_NAMES),
        }),
        supervised_keys=("image", "label"),
        homepage="https://github.com/zalandoresearch/fashion-mnist",
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # nothing is downloaded
    arrays = load_files(source_directory(self._source_dir))
    train_images = arrays["train-images-idx3-ubyte"]
    train_labels = arrays["train-labels-idx1-ubyte"]
    held = np.zeros(len(train_labels), bool)
    held[validation_indices(train_labels)] = True
    test = (arrays["t10k-images-idx3-ubyte"], arrays["t10k-labels-idx1-ubyte"])
    return {
        "train": self._generate_examples(train_images, train_labels, np.flatnonzero(~held)),
        "validation": self._generate_examples(train_images, train_labels, np.flatnonzero(held)),
        "test": self._generate_examples(*test, np.arange(len(test[1]))),
    }

  def _generate_examples(self, images, labels, indices):
    # The key is the image's index in its original file.
    for i in indices:
      yield int(i), {"image": images[i][..., None], "label": int(labels[i])}
