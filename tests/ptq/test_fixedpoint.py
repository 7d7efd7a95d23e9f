"""Goyal et al.'s search: budget schedule, the per-layer steps on a hand-made accuracy table, a
tiny model against brute force, and one compilation for the whole search."""

import itertools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from quantjax import intercept
from quantjax.ptq import fixedpoint
from quantjax.ptq.evaluator import Evaluator
from quantjax.ptq.fixedpoint import Point


def test_budget_schedule():
  t, L = 0.005, 4  # noqa: N806
  assert [fixedpoint.budget("weight", i, L, t) for i in range(1, 5)] == pytest.approx(
      [0.00125, 0.0025, 0.00375, 0.005])
  assert [fixedpoint.budget("bias", i, L, t) for i in (1, 4)] == [0.005, 0.005]
  assert [fixedpoint.budget("output", i, L, t) for i in range(1, 5)] == pytest.approx(
      [0.00625, 0.0075, 0.00875, 0.01])
  with pytest.raises(ValueError, match="component='act'"):
    fixedpoint.budget("act", 1, L, t)


def test_start_point_does_not_clip():
  assert fixedpoint.start_point(2.9, 12) == Point(12, 9)  # 2047 · 2^-9 ≈ 4.0 >= 2.9
  assert fixedpoint.start_point(0.2, 8) == Point(8, 9)  # ceil(log2 0.2) = -2
  assert fixedpoint.start_point(4.0, 8) == Point(8, 5)  # 127/32 < 4: the Goyal rule keeps 4 out


def _table_search(table, start, allowed, tradeoff=0.0015):
  """search_point on a dict {(b, F): accuracy}; unknown points are useless (accuracy 0)."""
  calls = []

  def evaluate(p):
    calls.append(p)
    return table.get((p.bits, p.frac), 0.0)

  chosen, acc = fixedpoint.search_point(evaluate, start, acc_fp=1.0, allowed=allowed,
                                        tradeoff=tradeoff)
  return chosen, acc, calls


def test_diagonal_then_width_then_neighbourhood_keeps_cheaper_point():
  # Diagonal (8,4) -> (7,3) -> (6,2) ok, (5,1) too lossy; width-only (5,2) ok, (4,2) too lossy.
  table = {(8, 4): 1.0, (7, 3): 0.999, (6, 2): 0.998, (5, 1): 0.9, (5, 2): 0.997, (4, 2): 0.9,
           # neighbourhood of (5, 2): (6, 3) is 0.1 % better: not worth a bit.
           (6, 3): 0.998, (6, 1): 0.99, (5, 3): 0.99, (4, 1): 0.5, (4, 3): 0.5}
  chosen, acc, calls = _table_search(table, Point(8, 4), allowed=0.005)
  assert (chosen, acc) == (Point(5, 2), 0.997)
  assert len(calls) == len(set(calls))  # every point evaluated once
  assert calls[:6] == [Point(8, 4), Point(7, 3), Point(6, 2), Point(5, 1), Point(5, 2),
                       Point(4, 2)]


def test_neighbourhood_optimum_taken_when_it_pays():
  table = {(8, 4): 1.0, (7, 3): 0.996, (6, 2): 0.9, (7, 4): 0.9, (6, 3): 0.9,
           (8, 3): 0.998}  # 0.2 % better than (7, 3) for one more bit: >= 0.15 %
  chosen, acc, _ = _table_search(table, Point(8, 4), allowed=0.005)
  assert (chosen, acc) == (Point(8, 4), 1.0)  # (8,4) is the neighbourhood optimum, 0.4 % better
  chosen, _, _ = _table_search(table, Point(8, 4), allowed=0.005, tradeoff=0.005)
  assert chosen == Point(7, 3)  # 0.4 % does not pay a 0.5 % trade-off: keep the cheaper point


def test_cheaper_neighbour_with_no_loss_is_taken():
  table = {(8, 4): 1.0, (7, 3): 1.0, (6, 2): 0.0, (6, 3): 0.0, (7, 2): 0.0, (6, 4): 1.0}
  chosen, _, _ = _table_search(table, Point(8, 4), allowed=0.005)
  assert chosen == Point(6, 4)  # (b-1, F+1): one bit cheaper and as accurate


def test_start_over_budget_gets_four_more_bits():
  chosen, _, _ = _table_search({(16, 12): 1.0}, Point(12, 8), allowed=0.005)
  assert chosen == Point(16, 12)


class Linear(nn.Module):
  @nn.compact
  def __call__(self, x, train: bool):  # x: [B, 6]
    del train
    return nn.Dense(4, name="fc")(x)


@pytest.fixture(scope="module")
def tiny():
  model = Linear()
  rng = np.random.default_rng(0)
  x = rng.normal(size=(400, 6)).astype(np.float32)
  variables = model.init(jax.random.key(0), x[:1], train=False)
  variables = jax.tree_util.tree_map(lambda v: v * 3.0, variables)
  labels = np.asarray(jnp.argmax(model.apply(variables, x, train=False), -1))  # float acc = 1
  layers = intercept.discover_layers(model, jnp.asarray(x[:2]), train=False)
  plan = intercept.resolve(layers, weight={"name": "fixed_point"}, act=None)
  _, created = intercept.quantized_apply(model, plan, training=False)(
      variables, jnp.asarray(x[:2]), train=False, mutable=["quant_state"])
  evaluator = Evaluator(model, plan, x, labels, batch_size=100)
  return variables, created["quant_state"], evaluator


def test_tiny_model_search_matches_brute_force_and_compiles_once(tiny):
  variables, base, evaluator = tiny
  kernel = variables["params"]["fc"]["kernel"]
  max_abs = {("fc", "weight"): float(jnp.max(jnp.abs(kernel)))}

  def accuracy(points):
    return evaluator({**variables, "quant_state": fixedpoint.quant_state(base, points)})

  threshold = 0.02
  # With the neighbourhood trade-off switched off (no accuracy pays for a bit), the search's
  # optimum is the fewest bits within the budget T·1/1, which brute force finds over every (b, F).
  result = fixedpoint.search(accuracy, max_abs, ["fc"], acc_fp=1.0, threshold=threshold,
                             tradeoff=1.0)
  chosen = result.points[("fc", "weight")]
  within = [(b, f) for b, f in itertools.product(range(2, 13), range(-4, 16))
            if 1.0 - accuracy({("fc", "weight"): Point(b, f)}) <= threshold]
  fewest = min(b for b, _ in within)
  assert chosen.bits == fewest, (chosen, sorted(within)[:5])
  assert 1.0 - result.accuracy <= threshold
  assert result.num_evaluations > 10
  # With the 0.15 % trade-off, a neighbour one sample (0.25 %) better may cost one bit more.
  paid = fixedpoint.search(accuracy, max_abs, ["fc"], acc_fp=1.0, threshold=threshold)
  assert fewest <= paid.points[("fc", "weight")].bits <= fewest + 1
  assert evaluator.num_calls > 200
  assert evaluator.num_traces == 1, "every candidate must reuse the one compiled evaluation"
