"""Batch augmentation in NumPy: random shifts, crops and flips of uint8 images.

It runs in the prefetch thread, so it is vectorised over the batch (about 1 ms for 128 CIFAR
images, 0.2 ms for 128 digits). Padding is zero, i.e. black before normalisation.

A batch's random draws (`draw`: an offset pair and a flip per image) are separate from their
application (`apply_drawn`), so that a process holding some rows of a global batch draws for the
whole batch, which costs three numbers per image, and crops and flips only its own rows: every
row gets the values it gets in a one-process run.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

AUGMENTATIONS = ("none", "shift", "shift_flip", "crop_flip")
SHIFT_PAD = 2  # digits: translations of up to 2 pixels; flips would turn digits into others
CROP_PAD = 4  # CIFAR-style


def check(name: str) -> None:
  """Raises ValueError unless `name` is one of `AUGMENTATIONS`."""
  if name not in AUGMENTATIONS:
    raise ValueError(f"augment={name!r} is not valid; choose one of {', '.join(AUGMENTATIONS)}")


@dataclasses.dataclass(frozen=True)
class Draws:
  """One batch's random augmentation values, one entry per image."""

  dy: np.ndarray  # int [B]: the crop's row offset in 0..2·pad
  dx: np.ndarray  # int [B]: its column offset
  flip: np.ndarray  # bool [B]: mirrored left-right (all False without a flip)

  def rows(self, rows: slice) -> Draws:
    """The draws of rows `rows` of the batch."""
    return Draws(self.dy[rows], self.dx[rows], self.flip[rows])


def draw(name: str, batch_size: int, rng: np.random.Generator) -> Draws | None:
  """The random values `apply` uses for a batch of `batch_size`; None for 'none'.

  Draws the row offsets [B], then the column offsets [B], each uniform in 0..2·pad, then for the
  '_flip' augmentations one uniform [B] (< 0.5: mirrored).
  """
  check(name)
  if name == "none":
    return None
  pad = CROP_PAD if name == "crop_flip" else SHIFT_PAD
  dy = rng.integers(0, 2 * pad + 1, size=batch_size)
  dx = rng.integers(0, 2 * pad + 1, size=batch_size)
  flip = rng.random(batch_size) < 0.5 if name != "shift" else np.zeros(batch_size, bool)
  return Draws(dy, dx, flip)


def random_crop(images: np.ndarray, pad: int, rng: np.random.Generator) -> np.ndarray:
  """Zero-pads [B, H, W, C] by `pad` and crops [H, W] back at a random offset per image.

  Draws the row offsets [B] and then the column offsets [B], each uniform in 0..2*pad.
  """
  dy = rng.integers(0, 2 * pad + 1, size=len(images))
  dx = rng.integers(0, 2 * pad + 1, size=len(images))
  return _crop(images, pad, dy, dx)


def _crop(images: np.ndarray, pad: int, dy: np.ndarray, dx: np.ndarray) -> np.ndarray:
  b, h, w, c = images.shape
  padded = np.zeros((b, h + 2 * pad, w + 2 * pad, c), images.dtype)
  padded[:, pad:pad + h, pad:pad + w] = images
  # Every crop as a view, [B, dy, dx, C, H, W]; one gather picks each image's own.
  windows = sliding_window_view(padded, (h, w), axis=(1, 2))
  return np.ascontiguousarray(windows[np.arange(b), dy, dx].transpose(0, 2, 3, 1))


def apply_drawn(images: np.ndarray, name: str, draws: Draws | None) -> np.ndarray:
  """Augments `images` with values from `draw` (or their `.rows(...)` for part of a batch)."""
  check(name)
  if name == "none":
    return images
  out = _crop(images, CROP_PAD if name == "crop_flip" else SHIFT_PAD, draws.dy, draws.dx)
  out[draws.flip] = out[draws.flip, :, ::-1]
  return out


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
  return apply_drawn(images, name, draw(name, len(images), rng))
