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
  """Goyal et al.'s "Sequential" network.

  Layers, in call order: conv1_1, bn1_1, conv1_2, bn1_2, conv2_1, ..., conv7_2, bn7_2, head.
  """

  num_classes: int = 10
  num_stages: int = 7  # stages of two convs each
  narrow_stages: int = 3  # stages 1..narrow_stages use `narrow` filters, the rest `wide`
  narrow: int = 32  # filters of the early stages
  wide: int = 64  # filters of the late stages
  dropout: float = 0.25  # dropout rate after each max-pool

  @nn.compact
  def __call__(self, x, train: bool):  # x: [B, H, W, C]
    for stage in range(1, self.num_stages + 1):
      features = self.narrow if stage <= self.narrow_stages else self.wide
      for j in (1, 2):
        x = nn.Conv(features, (3, 3), padding="SAME", name=f"conv{stage}_{j}")(x)
        x = nn.relu(x)
        x = nn.BatchNorm(use_running_average=not train, momentum=0.9,
                         name=f"bn{stage}_{j}")(x)  # [B, H', W', features]
      # Pool after stages 2, 4, 6 (the global max-pool follows the last stage); a map already
      # down to 1 pixel is left alone, so tiny inputs still run.
      if stage % 2 == 0 and stage < self.num_stages and min(x.shape[1:3]) >= 2:
        x = nn.max_pool(x, (2, 2), strides=(2, 2))  # [B, H'/2, W'/2, features]
        x = nn.Dropout(self.dropout, deterministic=not train, name=f"dropout{stage}")(x)
    x = jnp.max(x, axis=(1, 2))  # global max-pool: [B, C]
    return nn.Dense(self.num_classes, name="head")(x)  # [B, num_classes]
