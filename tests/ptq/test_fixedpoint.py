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


def _table_search(table, start, allowed, tradeoff=0.0015, **options):
  """search_point on a dict {(b, F): accuracy}; unknown points are useless (accuracy 0).

  Also searches with `lookahead` (each step's points in one call) and checks the same choice.
  """
  calls, batches = [], []

  def evaluate(points, log):
    log.extend(points)
    return [table.get((p.bits, p.frac), 0.0) for p in points]

  chosen, acc = fixedpoint.search_point(lambda ps: evaluate(ps, calls), start, acc_fp=1.0,
                                        allowed=allowed, tradeoff=tradeoff, **options)
  ahead = fixedpoint.search_point(lambda ps: batches.append(ps) or evaluate(ps, []), start,
                                  acc_fp=1.0, allowed=allowed, tradeoff=tradeoff,
                                  lookahead=True, **options)
  assert ahead == (chosen, acc)
  assert set(calls) <= {p for batch in batches for p in batch}  # it read nothing else
  assert len(batches) <= 4  # diagonal, widths, neighbourhood (+4 bits)
  return chosen, acc, calls


OLD_READING = {"extra_diagonal_step": False, "min_bits": 2}  # stop at the first failure, b >= 2


def test_diagonal_then_width_then_neighbourhood_keeps_cheaper_point():
  # Diagonal (8,4) -> (7,3) -> (6,2) ok, (5,1) too lossy; width-only (5,2) ok, (4,2) too lossy.
  table = {(8, 4): 1.0, (7, 3): 0.999, (6, 2): 0.998, (5, 1): 0.9, (5, 2): 0.997, (4, 2): 0.9,
           # neighbourhood of (5, 2): (6, 3) is 0.1 % better: not worth a bit.
           (6, 3): 0.998, (6, 1): 0.99, (5, 3): 0.99, (4, 1): 0.5, (4, 3): 0.5}
  chosen, acc, calls = _table_search(table, Point(8, 4), allowed=0.005, **OLD_READING)
  assert (chosen, acc) == (Point(5, 2), 0.997)
  assert len(calls) == len(set(calls))  # every point evaluated once
  assert calls[:6] == [Point(8, 4), Point(7, 3), Point(6, 2), Point(5, 1), Point(5, 2),
                       Point(4, 2)]
  # The authors' search (the default) also tries (4, 0) past the failing (5, 1); it fails too,
  # so the choice is the same.
  chosen, acc, calls = _table_search(table, Point(8, 4), allowed=0.005)
  assert (chosen, acc) == (Point(5, 2), 0.997)
  assert calls[:7] == [Point(8, 4), Point(7, 3), Point(6, 2), Point(5, 1), Point(4, 0),
                       Point(5, 2), Point(4, 2)]


# A landscape that is not monotone along the diagonal: (6, 2) loses 1 %, (5, 1) only 0.3 %.
NOT_MONOTONE = {(8, 4): 1.0, (7, 3): 0.999, (6, 2): 0.99, (5, 1): 0.997, (4, 1): 0.99,
                (5, 2): 0.996, (6, 1): 0.998, (8, 3): 0.999}


def test_extra_diagonal_step_is_taken_and_used_when_it_passes():
  chosen, acc, calls = _table_search(NOT_MONOTONE, Point(8, 4), allowed=0.005)
  # (5, 1) passed, so the diagonal ends there and (b) follows at once with (4, 1).
  assert calls[:5] == [Point(8, 4), Point(7, 3), Point(6, 2), Point(5, 1), Point(4, 1)]
  # (5, 1) passed past the failing (6, 2): the lowest-cost passing point; (b) then tries (4, 1),
  # which fails; in (c), (6, 1) is 0.1 % better (< 0.15 %) for one more bit: keep (5, 1).
  assert (chosen, acc) == (Point(5, 1), 0.997)
  # The earlier reading stops at (6, 2) and keeps (7, 3) (its neighbours fail or do not pay).
  chosen, acc, calls = _table_search(NOT_MONOTONE, Point(8, 4), allowed=0.005, **OLD_READING)
  assert (chosen, acc) == (Point(7, 3), 0.999)
  assert Point(5, 1) not in calls


def test_extra_diagonal_step_is_not_used_when_it_fails():
  table = {**NOT_MONOTONE, (5, 1): 0.9}
  chosen, acc, calls = _table_search(table, Point(8, 4), allowed=0.005)
  # One step past the failing (6, 2) and no further: (b) from (7, 3) follows with (6, 3).
  assert calls[:5] == [Point(8, 4), Point(7, 3), Point(6, 2), Point(5, 1), Point(6, 3)]
  assert (chosen, acc) == (Point(7, 3), 0.999)


def test_width_reaches_one_bit_where_dropping_the_tensor_costs_nothing():
  # A bias whose quantization never matters: every (b, F) with b >= 1 keeps the accuracy.
  table = {(b, f): 1.0 for b in range(1, 9) for f in range(-12, 8)}
  chosen, acc, calls = _table_search(table, Point(8, 4), allowed=0.005)
  assert chosen.bits == 1 and acc == 1.0
  assert calls[:8] == [Point(8 - k, 4 - k) for k in range(8)]  # the diagonal down to (1, -3)
  assert min(p.bits for p in calls) == 1  # b = 0 is never tried
  chosen, _, calls = _table_search(table, Point(8, 4), allowed=0.005, **OLD_READING)
  assert chosen.bits == 2 and min(p.bits for p in calls) == 2
  # (b) lowers b alone down to 1 too: the diagonal fails at (4, 0), the width does not matter.
  table = {(b, f): (1.0 if f >= 1 else 0.0) for b in range(1, 9) for f in range(-12, 8)}
  chosen, _, calls = _table_search(table, Point(8, 4), allowed=0.005)
  assert Point(1, 1) in calls and chosen.bits == 1


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


def test_identical_points_are_evaluated_once():
  # max|x| = 1.3: (b, F=2) codes reach round(5.2) = 5, which 4 bits and more hold whole.
  same = fixedpoint.identity(1.3)
  assert same(Point(4, 2)) == same(Point(5, 2)) == same(Point(12, 2)) != same(Point(3, 2))
  assert same(Point(3, 2)) != same(Point(2, 2))  # both clip the largest value, differently
  assert same(Point(1, 5)) == same(Point(6, -3)) == "zero"  # 1 bit; 1.3·2^-3 rounds to 0
  assert same(Point(6, -1)) == same(Point(7, -1)) != same(Point(6, 0))
  # A table search where the accuracy is a function of the identity: (6, 2) repeats (5, 2).
  table = {(b, f): (1.0 if f >= 1 and b >= 3 else 0.0) for b in range(1, 10) for f in range(-4, 9)}
  evaluated = []

  def evaluate(points):
    evaluated.extend(points)
    return [table[(p.bits, p.frac)] if same(p) != "zero" else 0.0 for p in points]

  plain = fixedpoint.search_point(evaluate, Point(8, 6), acc_fp=1.0, allowed=0.005)
  count = len(evaluated)
  evaluated.clear()
  assert fixedpoint.search_point(evaluate, Point(8, 6), acc_fp=1.0, allowed=0.005,
                                 same=same) == plain
  assert len({same(p) for p in evaluated}) == len(evaluated) < count


# Landscapes whose neighbourhood step (c) has neighbours below the current point's accuracy.
NEIGHBOURHOODS = [
    ({(8, 4): 1.0, (7, 3): 0.999, (6, 2): 0.998, (5, 1): 0.9, (5, 2): 0.997, (4, 2): 0.9,
      (6, 3): 0.998, (6, 1): 0.99, (5, 3): 0.99, (4, 1): 0.5, (4, 3): 0.5}, 0.0015),
    (NOT_MONOTONE, 0.0015),
    ({(8, 4): 1.0, (7, 3): 0.996, (6, 2): 0.9, (7, 4): 0.9, (6, 3): 0.9, (8, 3): 0.998}, 0.0015),
    ({(8, 4): 1.0, (7, 3): 0.996, (6, 2): 0.9, (7, 4): 0.9, (6, 3): 0.9, (8, 3): 0.998}, 0.005),
    ({(8, 4): 1.0, (7, 3): 1.0, (6, 2): 0.0, (6, 3): 0.0, (7, 2): 0.0, (6, 4): 1.0}, 0.0015),
    # (c) from (6, 2): no neighbour beats it, and (5, 3) ties it one bit cheaper, so it moves
    # there; a count stopped at the tie would keep (6, 2).
    ({(8, 4): 1.0, (7, 3): 0.996, (6, 2): 0.997, (5, 1): 0.9, (5, 2): 0.9, (5, 3): 0.997,
      (6, 1): 0.995, (6, 3): 0.996, (7, 2): 0.99}, 0.0015),
]


@pytest.mark.parametrize("table,tradeoff", NEIGHBOURHOODS)
@pytest.mark.parametrize("lookahead", [False, True])
def test_neighbours_below_the_current_point_may_stop_early(table, tradeoff, lookahead):
  # An evaluator that honours `at_least` as an early-stopping count would: any accuracy below
  # it (here 0) for a point below it, the exact one otherwise.
  floors = []

  def plain(points):
    return [table.get((p.bits, p.frac), 0.0) for p in points]

  def stopping(points, at_least=None):
    floors.append(at_least)
    exact = plain(points)
    return exact if at_least is None else [a if a >= at_least else 0.0 for a in exact]

  options = dict(acc_fp=1.0, allowed=0.005, tradeoff=tradeoff, lookahead=lookahead)
  want = fixedpoint.search_point(plain, Point(8, 4), **options)
  got = fixedpoint.search_point(stopping, Point(8, 4), stop_below_current=True, **options)
  assert got == want
  # Only the neighbourhood step asks, and with the accuracy of the point it started from.
  asked = [f for f in floors if f is not None]
  assert asked and set(asked) <= {a for a in table.values()}
  assert floors.index(asked[0]) == len(floors) - len(asked)


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

  def accuracy(configurations):
    return [evaluator({**variables, "quant_state": fixedpoint.quant_state(base, points)})
            for points in configurations]

  threshold = 0.02
  # With the neighbourhood trade-off switched off (no accuracy pays for a bit), the search's
  # optimum is the fewest bits within the budget T·1/1, which brute force finds over every (b, F).
  result = fixedpoint.search(accuracy, max_abs, ["fc"], acc_fp=1.0, threshold=threshold,
                             tradeoff=1.0)
  chosen = result.points[("fc", "weight")]
  within = [(b, f) for b, f in itertools.product(range(1, 13), range(-4, 16))
            if 1.0 - accuracy([{("fc", "weight"): Point(b, f)}])[0] <= threshold]
  fewest = min(b for b, _ in within)
  assert chosen.bits == fewest, (chosen, sorted(within)[:5])
  assert 1.0 - result.accuracy <= threshold
  assert result.num_evaluations > 10
  # With the 0.15 % trade-off, a neighbour one sample (0.25 %) better may cost one bit more.
  paid = fixedpoint.search(accuracy, max_abs, ["fc"], acc_fp=1.0, threshold=threshold)
  assert fewest <= paid.points[("fc", "weight")].bits <= fewest + 1
  assert evaluator.num_calls > 200
  assert evaluator.num_traces == 1, "every candidate must reuse the one compiled evaluation"


def test_passing_counts_the_candidates_within_budget():
  calls = []

  def accuracy(configurations):
    points = [config[("fc", "weight")] for config in configurations]
    calls.extend(points)
    return [1.0 if p.bits >= 4 else 0.5 for p in points]  # passes from 4 bits up

  result = fixedpoint.search(accuracy, {("fc", "weight"): 1.0}, ["fc"], acc_fp=1.0,
                             threshold=0.02)
  assert result.points[("fc", "weight")].bits == 4
  candidates = calls[1:]  # the first call is the start configuration's
  assert len(candidates) == len(set(candidates)) == result.num_evaluations - 1
  # The diagonal from (12, 11) passes down to (4, 3): 8 candidates; (5, 2), (5, 4) and (4, 2),
  # (4, 4) in the neighbourhood pass too; (3, 2), (2, 1), (3, 3), (3, 4) fail.
  assert result.num_passing == sum(p.bits >= 4 for p in candidates) == 12
  assert result.history[0]["passing"] == 12
