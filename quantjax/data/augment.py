"""Batch augmentation in NumPy (runs in the prefetch thread): random shifts, crops and flips."""

from __future__ import annotations

import numpy as np

AUGMENTATIONS = ("none", "shift", "crop_flip")


def check(name: str) -> None:
  if name not in AUGMENTATIONS:
    raise ValueError(f"augment={name!r} is not valid; choose one of {', '.join(AUGMENTATIONS)}")


def _random_crop(images: np.ndarray, pad: int, rng: np.random.Generator) -> np.ndarray:
  """Zero-pads by `pad` and crops back to the original size at a random offset per image."""
  b, h, w, _ = images.shape
  padded = np.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
  dy = rng.integers(0, 2 * pad + 1, size=b)
  dx = rng.integers(0, 2 * pad + 1, size=b)
  rows = dy[:, None] + np.arange(h)[None, :]  # [B, H]
  cols = dx[:, None] + np.arange(w)[None, :]  # [B, W]
  return padded[np.arange(b)[:, None, None], rows[:, :, None], cols[:, None, :]]


def apply(images: np.ndarray, name: str, rng: np.random.Generator) -> np.ndarray:
  """Augments a batch [B, H, W, C] of uint8 images (padding is black)."""
  if name == "none":
    return images
  if name == "shift":  # digits: translations of up to 2 pixels, no flips
    return _random_crop(images, 2, rng)
  if name == "crop_flip":  # CIFAR-style: pad 4, random crop, random horizontal flip
    out = _random_crop(images, 4, rng)
    flip = rng.random(len(out)) < 0.5
    out[flip] = out[flip, :, ::-1]
    return out
  check(name)
  raise AssertionError("unreachable")
