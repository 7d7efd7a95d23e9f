"""Goyal et al.'s 14-conv "Sequential" network (METHODS.md §4)."""

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from quantjax import models

MNIST = (2, 28, 28, 1)  # [B, H, W, C]
CONVS = [f"conv{stage}_{j}" for stage in range(1, 8) for j in (1, 2)]


def _images() -> np.ndarray:
  return np.random.default_rng(0).standard_normal(MNIST, np.float32)


def _record_calls(model, x, kinds, key):
  """(path, input shape, input min) of every `kinds` module call in one forward pass, in order."""
  calls = []

  def record(next_fun, args, kwargs, context):
    if context.method_name == "__call__" and isinstance(context.module, kinds):
      calls.append(("/".join(context.module.scope.path), args[0].shape, float(args[0].min())))
    return next_fun(*args, **kwargs)

  with nn.intercept_methods(record):
    variables = model.init(key, x, train=False)
  return calls, variables


def test_fourteen_convs_and_one_dense_in_network_order(key):
  model = models.get_model("sequential", num_classes=10)
  x = np.zeros(MNIST, np.float32)
  params = jax.eval_shape(lambda: model.init(jax.random.key(0), x, train=False))["params"]
  kernels = {name: p["kernel"].shape for name, p in params.items() if "kernel" in p}
  assert sum(len(shape) == 4 for shape in kernels.values()) == 14  # Conv: [KH, KW, Cin, Cout]
  assert [name for name, shape in kernels.items() if len(shape) == 2] == ["head"]  # Dense
  calls, _ = _record_calls(model, x, (nn.Conv, nn.Dense), key(0))
  assert [path for path, _, _ in calls] == [*CONVS, "head"]


def test_filters_pooling_and_parameter_count(key):
  model = models.get_model("sequential", num_classes=10)
  calls, variables = _record_calls(model, np.zeros(MNIST, np.float32), nn.Conv, key(0))
  # Input [H, W, Cin] of each conv: 2x2 max-pools after stages 2, 4 and 6 (28 -> 14 -> 7 -> 3).
  sizes = [28] * 4 + [14] * 4 + [7] * 4 + [3] * 2
  cin = [1] + [32] * 6 + [64] * 7
  assert [shape[1:] for _, shape, _ in calls] == list(zip(sizes, sizes, cin, strict=True))
  kernels = [variables["params"][c]["kernel"].shape for c in CONVS]
  assert [k[-1] for k in kernels] == [32] * 6 + [64] * 8  # stages 1-3: 32, stages 4-7: 64
  assert all(k[:2] == (3, 3) for k in kernels)
  convs = (3 * 3 * 1 * 32 + 32  # conv1_1: 320
           + 5 * (3 * 3 * 32 * 32 + 32)  # conv1_2 .. conv3_2: 5 x 9,248
           + (3 * 3 * 32 * 64 + 64)  # conv4_1: 18,496
           + 7 * (3 * 3 * 64 * 64 + 64))  # conv4_2 .. conv7_2: 7 x 36,928
  batch_norms = 6 * 2 * 32 + 8 * 2 * 64  # scale and bias per channel
  head = 64 * 10 + 10
  assert convs + batch_norms + head == 325_610
  count = sum(int(np.prod(p.shape)) for p in jax.tree.leaves(variables["params"]))
  assert count == 325_610


def test_filter_split_is_configurable():
  model = models.get_model("sequential", num_classes=10, narrow_stages=1, narrow=8, wide=16)
  x = np.zeros(MNIST, np.float32)
  params = jax.eval_shape(lambda: model.init(jax.random.key(0), x, train=False))["params"]
  assert [params[c]["kernel"].shape[-1] for c in CONVS] == [8] * 2 + [16] * 12


def test_relu_comes_before_batch_norm(key):
  model = models.get_model("sequential", num_classes=10)
  x = _images()
  calls, variables = _record_calls(model, x, nn.BatchNorm, key(0))
  assert [path for path, _, _ in calls] == [c.replace("conv", "bn") for c in CONVS]
  assert all(low >= 0.0 for _, _, low in calls), "every BatchNorm input is a ReLU output"
  # One train step moves the running mean 10% (momentum 0.9) towards the batch mean of
  # relu(conv1_1(x)), not of conv1_1(x).
  _, state = model.apply(variables, x, train=True, rngs={"dropout": key(1)},
                         mutable=["batch_stats"], capture_intermediates=True)
  conv_out = state["intermediates"]["conv1_1"]["__call__"][0]  # [B, 28, 28, 32]
  expected = 0.1 * jnp.mean(nn.relu(conv_out), axis=(0, 1, 2))
  np.testing.assert_allclose(state["batch_stats"]["bn1_1"]["mean"], expected, rtol=1e-5,
                             atol=1e-7)


def test_dropout_is_deterministic_in_eval_and_random_in_train(key):
  model = models.get_model("sequential", num_classes=10, dropout=0.5)
  x = _images()
  variables = model.init(key(1), x, train=False)
  k1, k2 = key(2), key(3)

  def train_logits(key):
    logits, _ = model.apply(variables, x, train=True, rngs={"dropout": key},
                            mutable=["batch_stats"])
    return logits

  no_rng = model.apply(variables, x, train=False)
  chex.assert_trees_all_equal(model.apply(variables, x, train=False, rngs={"dropout": k1}), no_rng)
  chex.assert_trees_all_equal(model.apply(variables, x, train=False, rngs={"dropout": k2}), no_rng)
  chex.assert_trees_all_equal(train_logits(k1), train_logits(k1))
  assert not np.allclose(train_logits(k1), train_logits(k2))


def test_dropout_rate_zero_gives_the_same_train_output_for_any_rng(key):
  # With rate 0 the only train/eval difference left is BatchNorm's batch statistics.
  model = models.get_model("sequential", num_classes=10, dropout=0.0)
  x = _images()
  variables = model.init(key(1), x, train=False)
  a, _ = model.apply(variables, x, train=True, rngs={"dropout": key(2)},
                     mutable=["batch_stats"])
  b, _ = model.apply(variables, x, train=True, rngs={"dropout": key(3)},
                     mutable=["batch_stats"])
  chex.assert_trees_all_equal(a, b)
