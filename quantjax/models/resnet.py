"""ResNets for 32x32 inputs (He et al. 2016): ResNet-20 (CIFAR) and ResNet-18 (no stem pooling)."""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax.numpy as jnp

from quantjax.models.registry import register


def _batch_norm(train: bool, name: str) -> nn.BatchNorm:
  return nn.BatchNorm(use_running_average=not train, momentum=0.9, name=name)


class BasicBlock(nn.Module):
  """conv3x3 -> BN -> ReLU -> conv3x3 -> BN, plus the (projected) input, then ReLU.

  Layers, in call order: conv1, bn1, conv2, bn2, and where the shape changes shortcut_conv,
  shortcut_bn.
  """

  features: int  # output channels
  strides: int = 1  # stride of conv1 and of the projection shortcut

  @nn.compact
  def __call__(self, x, train: bool):  # x: [B, H, W, Cin]
    y = nn.Conv(self.features, (3, 3), (self.strides,) * 2, padding="SAME", use_bias=False,
                name="conv1")(x)  # [B, H/s, W/s, features]
    y = nn.relu(_batch_norm(train, "bn1")(y))
    y = nn.Conv(self.features, (3, 3), padding="SAME", use_bias=False, name="conv2")(y)
    y = _batch_norm(train, "bn2")(y)
    if x.shape[-1] != self.features or self.strides != 1:
      # Projection shortcut (He et al.'s option B), so the add sees matching shapes.
      x = nn.Conv(self.features, (1, 1), (self.strides,) * 2, use_bias=False,
                  name="shortcut_conv")(x)  # [B, H/s, W/s, features]
      x = _batch_norm(train, "shortcut_bn")(x)
    return nn.relu(x + y)


class ResNet(nn.Module):
  """3x3 stem conv -> BN -> ReLU, stages of BasicBlocks, global average pool, dense head.

  Layers, in call order: stem_conv, stem_bn, stage1_block0/..., ..., head. The first block of
  every stage after the first halves the resolution.
  """

  num_classes: int
  stage_sizes: Sequence[int]  # BasicBlocks per stage
  stage_features: Sequence[int]  # channels per stage; the stem uses the first

  @nn.compact
  def __call__(self, x, train: bool):  # x: [B, 32, 32, C]
    x = nn.Conv(self.stage_features[0], (3, 3), padding="SAME", use_bias=False,
                name="stem_conv")(x)  # [B, 32, 32, F0]
    x = nn.relu(_batch_norm(train, "stem_bn")(x))
    for s, (blocks, features) in enumerate(zip(self.stage_sizes, self.stage_features,
                                               strict=True)):
      for b in range(blocks):
        strides = 2 if s > 0 and b == 0 else 1
        x = BasicBlock(features, strides, name=f"stage{s + 1}_block{b}")(x, train)
    x = jnp.mean(x, axis=(1, 2))  # global average pool: [B, C]
    return nn.Dense(self.num_classes, name="head")(x)  # [B, num_classes]


@register("resnet20")
def resnet20(num_classes: int = 10) -> ResNet:
  """ResNet-20: 3 stages x 3 blocks, 16/32/64 channels (272,474 parameters for 10 classes)."""
  return ResNet(num_classes=num_classes, stage_sizes=(3, 3, 3), stage_features=(16, 32, 64))


@register("resnet18")
def resnet18(num_classes: int = 10) -> ResNet:
  """ResNet-18: 4 stages x 2 blocks, 64..512 channels, 3x3 stride-1 stem, no max-pool (11.2 M)."""
  return ResNet(num_classes=num_classes, stage_sizes=(2, 2, 2, 2),
                stage_features=(64, 128, 256, 512))
