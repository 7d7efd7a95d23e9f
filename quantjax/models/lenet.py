"""LeNet-5 (LeCun et al. 1998) with ReLU and max-pooling, for 28x28 or 32x32 inputs."""

from __future__ import annotations

import flax.linen as nn

from quantjax.models.registry import register


@register("lenet5")
class LeNet5(nn.Module):
  """conv 6@5x5 -> pool -> conv 16@5x5 -> pool -> fc 120 -> fc 84 -> fc classes; no BatchNorm.

  Layers, in call order: conv1, conv2, fc1, fc2, fc3.
  """

  num_classes: int = 10
  width: float = 1.0  # multiplies every hidden width (1.0 = the classic 6/16/120/84)

  def _scaled(self, features: int) -> int:
    return max(round(features * self.width), 1)

  @nn.compact
  def __call__(self, x, train: bool):  # x: [B, 28, 28, C] (or 32x32)
    del train  # no BatchNorm or dropout
    # 28x28 inputs are padded (SAME) to act like the classic 32x32 LeNet; 32x32 inputs are not,
    # so both reach the same [B, 5, 5, 16] before flattening.
    padding = "SAME" if x.shape[1] < 32 else "VALID"
    x = nn.relu(nn.Conv(self._scaled(6), (5, 5), padding=padding, name="conv1")(x))  # [B,28,28,6]
    x = nn.max_pool(x, (2, 2), strides=(2, 2))  # [B, 14, 14, 6]
    x = nn.relu(nn.Conv(self._scaled(16), (5, 5), padding="VALID", name="conv2")(x))  # [B,10,10,16]
    x = nn.max_pool(x, (2, 2), strides=(2, 2))  # [B, 5, 5, 16]
    x = x.reshape(x.shape[0], -1)  # [B, 400]
    x = nn.relu(nn.Dense(self._scaled(120), name="fc1")(x))  # [B, 120]
    x = nn.relu(nn.Dense(self._scaled(84), name="fc2")(x))  # [B, 84]
    return nn.Dense(self.num_classes, name="fc3")(x)  # [B, num_classes]
