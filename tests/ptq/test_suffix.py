"""The suffix evaluator: the same counts and the same search choices as a full evaluation."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from quantjax import intercept
from quantjax.ptq import fixedpoint, suffix
from quantjax.ptq.evaluator import Evaluator
from quantjax.ptq.fixedpoint import Point


class Chain(nn.Module):
  """Conv -> ReLU -> Conv -> ReLU -> Dense -> ReLU -> Dense: every layer fed by the previous."""

  residual: bool = False  # add conv1's output to conv2's: conv2's cut skips a live tensor

  @nn.compact
  def __call__(self, x, train: bool):  # x: [B, 6, 6, 1]
    del train
    h = nn.relu(nn.Conv(4, (3, 3), name="conv1")(x))  # [B, 6, 6, 4]
    y = nn.relu(nn.Conv(4, (3, 3), name="conv2")(h))
    if self.residual:
      y = y + h
    y = nn.relu(nn.Dense(8, name="fc1")(y.reshape(y.shape[0], -1)))  # [B, 8]
    return nn.Dense(3, name="fc2")(y)  # [B, 3]


def _setup(residual=False, n=200):
  model = Chain(residual=residual)
  rng = np.random.default_rng(0)
  x = rng.normal(size=(n, 6, 6, 1)).astype(np.float32)
  variables = model.init(jax.random.key(1), x[:1], train=False)
  # Biases of different sizes (init gives zeros), so the bias search has something to find.
  variables = jax.tree_util.tree_map_with_path(
      lambda path, v: v + 0.05 * jax.random.normal(jax.random.key(len(str(path))), v.shape)
      if "bias" in str(path) else v, variables)
  labels = np.asarray(jnp.argmax(model.apply(variables, x, train=False), -1)).astype(np.int32)
  flip = rng.random(n) < 0.1  # a float accuracy near 0.9, so a candidate can also gain
  labels = np.where(flip, (labels + 1) % 3, labels).astype(np.int32)
  layers = intercept.discover_layers(model, jnp.asarray(x[:2]), train=False)
  spec = {"name": "fixed_point"}
  plan = intercept.resolve(layers, weight=spec, bias=spec, output=spec, act=None)
  _, created = intercept.quantized_apply(model, plan, training=False)(
      variables, jnp.asarray(x[:2]), train=False, mutable=["quant_state"])
  base = jax.device_get(created["quant_state"])
  max_abs = {}
  outputs = {}

  def record(next_fun, args, kwargs, context):
    out = next_fun(*args, **kwargs)
    if isinstance(context.module, (nn.Conv, nn.Dense)) and context.method_name == "__call__":
      outputs[context.module.name] = out
    return out

  with nn.intercept_methods(record):
    model.apply(variables, jnp.asarray(x), train=False)
  for layer in layers:
    params = variables["params"][layer.path]
    max_abs[(layer.path, "weight")] = float(jnp.max(jnp.abs(params["kernel"])))
    max_abs[(layer.path, "bias")] = float(jnp.max(jnp.abs(params["bias"])))
    max_abs[(layer.path, "output")] = float(jnp.max(jnp.abs(outputs[layer.path])))
  paths = [layer.path for layer in layers]
  return model, plan, variables, base, x, labels, max_abs, paths


@pytest.fixture(scope="module")
def chain():
  """The plain and the fast search on the chain model, and their evaluators."""
  model, plan, variables, base, x, labels, max_abs, paths = _setup()
  plain = Evaluator(model, plan, x, labels, batch_size=50)

  def accuracy(points):
    return plain({**variables, "quant_state": fixedpoint.quant_state(base, points)})

  acc_fp = Evaluator(model, None, x, labels, batch_size=50)(variables)
  options = {"acc_fp": acc_fp, "threshold": 0.03, "start_bits": {"weight": 10, "bias": 8,
                                                                  "output": 10}}
  slow = fixedpoint.search(accuracy, max_abs, paths, **options)
  fast = suffix.PointAccuracy.build(model, plan, paths, variables, base, x, labels,
                                    batch_size=50)
  quick = fixedpoint.search(fast.accuracy, max_abs, paths, focus=fast.focus, stop_early=True,
                            **options)
  return slow, quick, fast, plain, (variables, base, x, paths)


def test_fast_search_makes_the_plain_searchs_choices(chain):
  slow, quick, fast, plain, _ = chain
  assert quick.points == slow.points
  assert quick.accuracy == slow.accuracy
  assert [r["accuracy"] for r in quick.history] == [r["accuracy"] for r in slow.history]
  assert quick.num_evaluations >= slow.num_evaluations  # plus the exact re-counts, if any
  # The landscape is not trivial: widths fall far below the start (10 and 8 bits).
  assert min(p.bits for p in slow.points.values()) <= 2
  assert max(p.bits for p in slow.points.values()) >= 6
  assert fast.num_traces == 1 and fast.evaluator.num_record_traces == 1
  assert plain.num_traces == 1
  assert not fast.evaluator._full_layers  # a chain: every cut is valid  # noqa: SLF001


def test_counts_from_a_cut_equal_full_counts_and_stop_early(chain):
  _, _, fast, plain, (variables, base, x, paths) = chain
  fast = fast.evaluator
  coarse = {(p, c): Point(3, 2) for p in paths for c in ("weight", "output")}
  state = fixedpoint.quant_state(base, coarse)
  expected = round(plain({**variables, "quant_state": state}) * len(x))
  for layer, kind in [(0, suffix.CONV), (1, suffix.INPUT), (2, suffix.CONV), (3, suffix.INPUT),
                      (3, suffix.CONV)]:
    fast.focus(state, layer, kind)
    correct, wrong, _, finished = fast.evaluate(state)
    assert (correct, wrong, finished) == (expected, len(x) - expected, True), (layer, kind)
  # Stopping: more than 2 wrong predictions in the first batch of 50 ends the count there.
  correct, wrong, _, finished = fast.evaluate(state, max_wrong=2)
  assert not finished and wrong > 2 and correct + wrong == 50
  assert fast.num_traces == 1


def test_a_skip_connection_around_the_cut_falls_back_to_full_evaluation():
  model, plan, variables, base, x, labels, _, paths = _setup(residual=True)
  plain = Evaluator(model, plan, x, labels, batch_size=50)
  fast = suffix.SuffixEvaluator(model, plan, paths, variables, x, labels, batch_size=50)
  state = fixedpoint.quant_state(base, {(p, "weight"): Point(4, 3) for p in paths})
  expected = round(plain({**variables, "quant_state": state}) * len(x))
  fast.focus(state, 1, suffix.INPUT)  # conv1's output also skips to fc1: the cut is refused
  assert fast._full_layers == {(1, suffix.INPUT)}  # noqa: SLF001
  assert fast.evaluate(state)[:2] == (expected, len(x) - expected)
