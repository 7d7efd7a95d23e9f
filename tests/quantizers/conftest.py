"""A tiny Conv + Dense model whose lax primitives record the operands they receive."""

import flax.linen as nn
import jax
import pytest


@pytest.fixture
def recorded_conv_dense():
  """(model, operands): calling the model appends (lhs, rhs) per Conv/Dense to `operands`."""
  operands = []

  def record(primitive):
    def call(lhs, rhs, *args, **kwargs):
      operands.append((lhs, rhs))
      return primitive(lhs, rhs, *args, **kwargs)
    return call

  class ConvDense(nn.Module):
    @nn.compact
    def __call__(self, x):  # x: [B, 5, 5, 1]
      x = nn.relu(nn.Conv(3, (3, 3), name="conv",
                          conv_general_dilated=record(jax.lax.conv_general_dilated))(x))
      return nn.Dense(2, name="fc", dot_general=record(jax.lax.dot_general))(
          x.reshape(x.shape[0], -1))

  return ConvDense(), operands
