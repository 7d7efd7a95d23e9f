"""The 14-conv "Sequential" network of Goyal et al. (arXiv:2102.02147), METHODS.md §4.

7 stages of 2 x (3x3 conv -> ReLU -> BatchNorm), 32 filters then 64, 2x2 max-pool and dropout
after every second stage, global max-pool and a dense classifier. ReLU precedes BatchNorm, as in
the paper's Keras model.
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from quantjax.models.registry import register


@register("sequential")
class Sequential(nn.Module):
  num_classes: int = 10
  num_stages: int = 7  # stages of two convs each
  narrow_stages: int = 3  # the first stages use `narrow` filters, the rest `wide`
  narrow: int = 32
  wide: int = 64
  dropout: float = 0.25  # after each pooling

  @nn.compact
  def __call__(self, x, train: bool):  # x: [B, H, W, C]
    for stage in range(1, self.num_stages + 1):
      features = self.narrow if stage <= self.narrow_stages else self.wide
      for j in (1, 2):
        x = nn.Conv(features, (3, 3), padding="SAME", name=f"conv{stage}_{j}")(x)
        x = nn.relu(x)
        x = nn.BatchNorm(use_running_average=not train, momentum=0.9,
                         name=f"bn{stage}_{j}")(x)
      if stage % 2 == 0 and stage < self.num_stages and min(x.shape[1:3]) >= 2:
        x = nn.max_pool(x, (2, 2), strides=(2, 2))
        x = nn.Dropout(self.dropout, deterministic=not train)(x)
    x = jnp.max(x, axis=(1, 2))  # global max-pool: [B, C]
    return nn.Dense(self.num_classes, name="head")(x)  # [B, num_classes]
