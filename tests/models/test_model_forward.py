"""Every registered model: logits shape, finiteness, call order, BatchNorm statistics.

Parametrized over `model_names()`, so a newly registered model is tested (and fails until it gets
an entry in `_INPUT_SHAPES` and `_FIRST_LAST`).
"""

import chex
import flax.linen as nn
import jax
import numpy as np
import pytest

from quantjax import models

NUM_CLASSES = 7  # not 10, so a hard-coded classifier width would show
_INPUT_SHAPES = {  # [B, H, W, C], the datasets each model is meant for
    "lenet5": (2, 28, 28, 1),
    "sequential": (2, 28, 28, 1),
    "vgg_small": (2, 32, 32, 3),
    "resnet20": (2, 32, 32, 3),
    "resnet18": (2, 32, 32, 3),
}
_FIRST_LAST = {  # (input layer, classifier) paths
    "lenet5": ("conv1", "fc3"),
    "sequential": ("conv1_1", "head"),
    "vgg_small": ("conv1", "head"),
    "resnet20": ("stem_conv", "head"),
    "resnet18": ("stem_conv", "head"),
}


def _images(name: str) -> np.ndarray:
  return np.random.default_rng(0).standard_normal(_INPUT_SHAPES[name], np.float32)  # [B, H, W, C]


def _path(module: nn.Module) -> str:
  return "/".join(module.scope.path)


def _conv_dense_call_order(model, x) -> list[str]:
  """Paths of the Conv/Dense layers in the order one (abstract) forward pass calls them."""
  calls = []

  def record(next_fun, args, kwargs, context):
    if context.method_name == "__call__" and isinstance(context.module, (nn.Conv, nn.Dense)):
      calls.append(_path(context.module))
    return next_fun(*args, **kwargs)

  def init():
    with nn.intercept_methods(record):
      return model.init(jax.random.key(0), x, train=False)

  jax.eval_shape(init)
  return calls


def _init(model, rng, x):
  """`model.init` jitted: eagerly, every op of a ResNet compiles a program of its own."""
  return jax.jit(lambda r, x: model.init(r, x, train=False))(rng, x)


@pytest.mark.parametrize("name", models.model_names())
def test_forward_shape_and_finite_in_both_modes(name, key):
  model = models.get_model(name, num_classes=NUM_CLASSES)
  x = _images(name)
  variables = _init(model, key(1), x)
  # Eval mode needs no dropout rng and no mutable collection.
  eval_logits = jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, x)
  train_logits, _ = jax.jit(lambda v, x, r: model.apply(
      v, x, train=True, rngs={"dropout": r}, mutable=["batch_stats"]))(variables, x, key(2))
  for logits in (eval_logits, train_logits):
    chex.assert_shape(logits, (x.shape[0], NUM_CLASSES))
    chex.assert_type(logits, np.float32)
    chex.assert_tree_all_finite(logits)
  chex.assert_tree_all_finite(variables)
  if name != "lenet5":  # BatchNorm normalizes by batch statistics in train mode only
    assert not np.allclose(eval_logits, train_logits)


@pytest.mark.parametrize("name", models.model_names())
def test_logits_shape_for_a_larger_batch_abstractly(name):
  model = models.get_model(name, num_classes=NUM_CLASSES)
  x = jax.ShapeDtypeStruct((16, *_INPUT_SHAPES[name][1:]), np.float32)
  variables = jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False), x)
  logits = jax.eval_shape(lambda v, x: model.apply(v, x, train=False), variables, x)
  chex.assert_shape(logits, (16, NUM_CLASSES))


@pytest.mark.parametrize("name", models.model_names())
def test_first_layer_is_the_input_conv_and_last_is_the_classifier(name):
  model = models.get_model(name, num_classes=NUM_CLASSES)
  x = np.zeros(_INPUT_SHAPES[name], np.float32)
  calls = _conv_dense_call_order(model, x)
  assert (calls[0], calls[-1]) == _FIRST_LAST[name]
  assert len(calls) == len(set(calls)), "every layer is called once per forward pass"
  params = jax.eval_shape(lambda: model.init(jax.random.key(0), x, train=False))["params"]
  assert params[calls[0]]["kernel"].shape[-2] == x.shape[-1]  # reads the image channels
  assert params[calls[-1]]["kernel"].shape[-1] == NUM_CLASSES  # writes the logits


@pytest.mark.parametrize("name", [n for n in models.model_names() if n != "lenet5"])
def test_batch_stats_update_in_train_mode_only(name, key):
  model = models.get_model(name, num_classes=NUM_CLASSES)
  x = _images(name)
  variables = _init(model, key(1), x)
  before = variables["batch_stats"]
  _, after_eval = jax.jit(lambda v, x: model.apply(
      v, x, train=False, mutable=["batch_stats"]))(variables, x)
  _, after_train = jax.jit(lambda v, x, r: model.apply(
      v, x, train=True, rngs={"dropout": r}, mutable=["batch_stats"]))(variables, x, key(2))
  chex.assert_trees_all_equal(after_eval["batch_stats"], before)
  changed = jax.tree.map(lambda a, b: not np.array_equal(a, b), after_train["batch_stats"], before)
  assert all(jax.tree.leaves(changed)), changed


def test_lenet5_has_no_batch_stats():
  model = models.get_model("lenet5", num_classes=NUM_CLASSES)
  variables = jax.eval_shape(lambda: model.init(jax.random.key(0),
                                                np.zeros((1, 28, 28, 1), np.float32), train=False))
  assert set(variables) == {"params"}
