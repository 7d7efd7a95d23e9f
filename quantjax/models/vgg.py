"""A small VGG-style network: [64, 64, M, 128, 128, M, 256, 256, M] 3x3 convs with BatchNorm."""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from quantjax.models.registry import register

_LAYOUT = (64, 64, "M", 128, 128, "M", 256, 256, "M")  # conv widths; "M" = 2x2 max-pool


@register("vgg_small")
class VGGSmall(nn.Module):
  """Six 3x3 conv -> BN -> ReLU layers in three pooled pairs, global average pool, dense head.

  Layers, in call order: conv1, bn1, ..., conv6, bn6, head.
  """

  num_classes: int = 10
  width: float = 1.0  # multiplies every conv width

  @nn.compact
  def __call__(self, x, train: bool):  # x: [B, H, W, C]
    i = 0
    for item in _LAYOUT:
      if item == "M":
        x = nn.max_pool(x, (2, 2), strides=(2, 2))  # [B, H/2, W/2, C]
        continue
      i += 1
      x = nn.Conv(max(round(item * self.width), 1), (3, 3), padding="SAME", use_bias=False,
                  name=f"conv{i}")(x)
      x = nn.BatchNorm(use_running_average=not train, momentum=0.9, name=f"bn{i}")(x)
      x = nn.relu(x)
    x = jnp.mean(x, axis=(1, 2))  # global average pool: [B, C]
    return nn.Dense(self.num_classes, name="head")(x)  # [B, num_classes]
