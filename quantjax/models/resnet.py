"""ResNets for 32x32 inputs (He et al. 2016): ResNet-20 (CIFAR) and ResNet-18 (no stem pooling)."""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax.numpy as jnp

from quantjax.models.registry import register


class BasicBlock(nn.Module):
  """conv3x3 -> BN -> ReLU -> conv3x3 -> BN, plus the (projected) input, then ReLU."""

  features: int
  strides: int = 1

  @nn.compact
  def __call__(self, x, train: bool):  # x: [B, H, W, Cin]
    bn = lambda name: nn.BatchNorm(use_running_average=not train, momentum=0.9, name=name)  # noqa: E731
    y = nn.Conv(self.features, (3, 3), (self.strides,) * 2, padding="SAME", use_bias=False,
                name="conv1")(x)
    y = nn.relu(bn("bn1")(y))
    y = nn.Conv(self.features, (3, 3), padding="SAME", use_bias=False, name="conv2")(y)
    y = bn("bn2")(y)
    if x.shape[-1] != self.features or self.strides != 1:
      # Projection shortcut (option B): a residual add that rescales one branch.
      x = nn.Conv(self.features, (1, 1), (self.strides,) * 2, use_bias=False,
                  name="shortcut_conv")(x)
      x = bn("shortcut_bn")(x)
    return nn.relu(x + y)


class ResNet(nn.Module):
  num_classes: int
  stage_sizes: Sequence[int]
  stage_features: Sequence[int]

  @nn.compact
  def __call__(self, x, train: bool):  # x: [B, 32, 32, C]
    x = nn.Conv(self.stage_features[0], (3, 3), padding="SAME", use_bias=False,
                name="stem_conv")(x)
    x = nn.relu(nn.BatchNorm(use_running_average=not train, momentum=0.9, name="stem_bn")(x))
    for s, (blocks, features) in enumerate(zip(self.stage_sizes, self.stage_features,
                                               strict=True)):
      for b in range(blocks):
        strides = 2 if s > 0 and b == 0 else 1
        x = BasicBlock(features, strides, name=f"stage{s + 1}_block{b}")(x, train)
    x = jnp.mean(x, axis=(1, 2))  # global average pool: [B, C]
    return nn.Dense(self.num_classes, name="head")(x)


@register("resnet20")
def resnet20(num_classes: int = 10) -> ResNet:
  """3 stages x 3 blocks, 16/32/64 channels (0.27 M parameters)."""
  return ResNet(num_classes=num_classes, stage_sizes=(3, 3, 3), stage_features=(16, 32, 64))


@register("resnet18")
def resnet18(num_classes: int = 10) -> ResNet:
  """4 stages x 2 blocks, 64..512 channels, 3x3 stem without max-pool (11 M parameters)."""
  return ResNet(num_classes=num_classes, stage_sizes=(2, 2, 2, 2),
                stage_features=(64, 128, 256, 512))
