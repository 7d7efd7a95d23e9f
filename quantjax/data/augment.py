"""Batch augmentation in NumPy: random shifts, crops and flips of uint8 images.

It runs in the prefetch thread, so it is vectorised over the batch (about 1 ms for 128 CIFAR
images, 0.2 ms for 128 digits). Padding is zero, i.e. black before normalisation.
"""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

AUGMENTATIONS = ("none", "shift", "shift_flip", "crop_flip")
SHIFT_PAD = 2  # digits: translations of up to 2 pixels; flips would turn digits into others
CROP_PAD = 4  # CIFAR-style


def check(name: str) -> None:
  """Raises ValueError unless `name` is one of `AUGMENTATIONS`."""
  if name not in AUGMENTATIONS:
    raise ValueError(f"augment={name!r} is not valid; choose one of {', '.join(AUGMENTATIONS)}")


def random_crop(images: np.ndarray, pad: int, rng: np.random.Generator) -> np.ndarray:
  """Zero-pads [B, H, W, C] by `pad` and crops [H, W] back at a random offset per image.

  Draws the row offsets [B] and then the column offsets [B], each uniform in 0..2*pad.
  """
  b, h, w, c = images.shape
  padded = np.zeros((b, h + 2 * pad, w + 2 * pad, c), images.dtype)
  padded[:, pad:pad + h, pad:pad + w] = images
  dy = rng.integers(0, 2 * pad + 1, size=b)
  dx = rng.integers(0, 2 * pad + 1, size=b)
  # Every crop as a view, [B, dy, dx, C, H, W]; one gather picks each image's own.
  windows = sliding_window_view(padded, (h, w), axis=(1, 2))
  return np.ascontiguousarray(windows[np.arange(b), dy, dx].transpose(0, 2, 3, 1))


def apply(images: np.ndarray, name: str, rng: np.random.Generator) -> np.ndarray:
  """Augments a batch of images.

  Args:
    images: [B, H, W, C] uint8.
    name: 'none' (returned as is), 'shift' (pad 2, random crop), 'shift_flip' (pad 2, random
      crop, then a horizontal flip with probability 1/2: clothes, which a mirror keeps in their
      class) or 'crop_flip' (the same with pad 4, CIFAR-style).
    rng: the batch's generator; `apply` is a pure function of (images, name, rng state).

  Returns:
    [B, H, W, C] images of the same dtype.
  """
  check(name)
  if name == "none":
    return images
  if name == "shift":
    return random_crop(images, SHIFT_PAD, rng)
  out = random_crop(images, SHIFT_PAD if name == "shift_flip" else CROP_PAD, rng)
  flip = rng.random(len(out)) < 0.5
  out[flip] = out[flip, :, ::-1]
  return out
