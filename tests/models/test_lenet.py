"""LeNet-5: exact parameter counts, 28x28 and 32x32 inputs, the width multiplier."""

import chex
import jax
import numpy as np
import pytest

from quantjax import models


def _param_count(model, image_shape) -> int:
  x = np.zeros((1, *image_shape), np.float32)
  params = jax.eval_shape(lambda: model.init(jax.random.key(0), x, train=False))["params"]
  return sum(int(np.prod(p.shape)) for p in jax.tree.leaves(params))


@pytest.mark.parametrize("image_shape", [(28, 28, 1), (32, 32, 1)])
def test_classic_lenet5_parameter_count(image_shape):
  # Both 28x28 (SAME conv1) and 32x32 (VALID conv1) inputs reach [5, 5, 16] before fc1.
  conv1 = 5 * 5 * 1 * 6 + 6  # 156
  conv2 = 5 * 5 * 6 * 16 + 16  # 2,416
  fc1 = (5 * 5 * 16) * 120 + 120  # 48,120
  fc2 = 120 * 84 + 84  # 10,164
  fc3 = 84 * 10 + 10  # 850
  assert conv1 + conv2 + fc1 + fc2 + fc3 == 61_706
  assert _param_count(models.get_model("lenet5", num_classes=10), image_shape) == 61_706


def test_half_width_parameter_count():
  # Widths 3, 8, 60, 42; the classifier keeps num_classes outputs.
  conv1 = 5 * 5 * 1 * 3 + 3  # 78
  conv2 = 5 * 5 * 3 * 8 + 8  # 608
  fc1 = (5 * 5 * 8) * 60 + 60  # 12,060
  fc2 = 60 * 42 + 42  # 2,562
  fc3 = 42 * 10 + 10  # 430
  assert conv1 + conv2 + fc1 + fc2 + fc3 == 15_738
  model = models.get_model("lenet5", num_classes=10, width=0.5)
  assert _param_count(model, (28, 28, 1)) == 15_738


def test_layer_shapes_on_28x28():
  model = models.get_model("lenet5", num_classes=10)
  x = np.zeros((1, 28, 28, 1), np.float32)
  params = jax.eval_shape(lambda: model.init(jax.random.key(0), x, train=False))["params"]
  assert list(params) == ["conv1", "conv2", "fc1", "fc2", "fc3"]
  chex.assert_shape(params["conv1"]["kernel"], (5, 5, 1, 6))
  chex.assert_shape(params["conv2"]["kernel"], (5, 5, 6, 16))
  chex.assert_shape(params["fc1"]["kernel"], (400, 120))
  chex.assert_shape(params["fc3"]["kernel"], (84, 10))


def test_train_flag_does_not_change_the_output(key):
  model = models.get_model("lenet5", num_classes=10)
  x = np.random.default_rng(0).standard_normal((2, 28, 28, 1), np.float32)
  variables = model.init(key(1), x, train=False)
  chex.assert_trees_all_equal(model.apply(variables, x, train=True),
                              model.apply(variables, x, train=False))
