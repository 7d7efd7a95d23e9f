"""Per-channel normalisation: known statistics for common datasets, else estimated from train."""

from __future__ import annotations

import numpy as np

from quantjax.data.source import SplitReader, base_name

# Mean and std per channel in [0, 1] pixel units, from each dataset's full train split.
KNOWN_STATS = {
    "mnist5k": ((0.1307,), (0.3081,)),  # MNIST's: mnist5k is a subset of it
    "mnist": ((0.1307,), (0.3081,)),
    "fashion_mnist": ((0.2860,), (0.3530,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}
ESTIMATE_EXAMPLES = 1000
_MIN_STD = 1e-3  # a constant channel would otherwise divide by zero


def channel_stats(name: str, train: SplitReader) -> tuple[tuple[float, ...], tuple[float, ...]]:
  """Mean and std per channel, in [0, 1] pixel units.

  Args:
    name: dataset name; config and version are ignored when looking up `KNOWN_STATS`.
    train: the train split, read only when `name` has no known statistics (its first
      `ESTIMATE_EXAMPLES` examples).

  Returns:
    (mean, std), one float per channel each.
  """
  if base_name(name) in KNOWN_STATS:
    return KNOWN_STATS[base_name(name)]
  images, _ = train.read(np.arange(min(len(train), ESTIMATE_EXAMPLES)))
  sample = images.astype(np.float64) / 255.0  # [N, H, W, C]
  mean = sample.mean(axis=(0, 1, 2))
  std = np.maximum(sample.std(axis=(0, 1, 2)), _MIN_STD)
  return tuple(float(m) for m in mean), tuple(float(s) for s in std)


class Normaliser:
  """uint8 images [B, H, W, C] -> float32 (x / 255 - mean) / std."""

  def __init__(self, mean: tuple[float, ...], std: tuple[float, ...]):
    std32 = np.asarray(std, np.float32)
    # One multiply-add per pixel instead of divide, subtract, divide.
    self.scale = (1.0 / (255.0 * std32)).astype(np.float32)  # [C]
    self.offset = (np.asarray(mean, np.float32) / std32).astype(np.float32)  # [C]

  def __call__(self, images: np.ndarray) -> np.ndarray:
    return images.astype(np.float32) * self.scale - self.offset
