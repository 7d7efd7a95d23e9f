"""Layer-wise fixed-point search of Goyal et al. (arXiv:2102.02147), METHODS.md §4.

Post-training, on the validation split. Every Conv/Dense layer has three Qm.n tensors: its
weights, its bias and its output (the activation after ReLU, see `LayerQuant.output`), each a
point `(b, F)`. The search:

1. starts every layer at `b = 12` (biases 8) with `F = b - 1 - ceil(log2 max|x|)` (no clipping);
   if the whole start configuration loses more than `T`, every start width grows by 4 bits (up to
   16) and it retries;
2. goes through the components in the order weights, biases, activations and, within each, the
   layers in network order; every point already chosen stays in place while the next is searched;
3. allows layer `i` of `L` a cumulative relative drop `(acc_fp - acc_q)/acc_fp` of `T·i/L`
   (weights), `T` (biases) and `T + T·i/L` (activations): `budget`;
4. per layer and component (`search_point`): (a) lowers `b` and `F` together (same range, coarser
   step) while within budget and, as the authors' published search code does, takes one more
   diagonal step past the first failing point, keeping the lowest-cost point that passed (a
   landscape is not monotone: one more bit off the step can pass again); (b) then lowers `b`
   alone (same step, clipping) while within budget, down to `b = 1` (the only 1-bit symmetric
   code is 0: the tensor is dropped; most biases end there on MNIST); (c) evaluates the 3×3
   neighbourhood of `(b, F)` and moves to its most accurate point within budget only if that is
   at least `tradeoff` (0.15 %, relative to float) more accurate than the current point, or no
   more expensive and not less accurate; else it keeps the cheaper current point. A layer whose
   start point is already over budget and has no neighbour within budget gets 4 more bits (same
   range) once.

`extra_diagonal_step=False, min_bits=2` give this project's earlier reading (stop at the first
failure, floor at 2 bits); the config fields `ptq.extra_diagonal_step` and `ptq.min_bits` select it.

Candidates differ only in 'quant_state' values of the `fixed_point` quantizer, so one compiled
evaluation serves the whole search (`quantjax.ptq.evaluator`). `quantjax.ptq.suffix` evaluates
only the layers from the one being searched on, stops a candidate once it cannot pass (a
neighbour in (c), once it cannot reach the current point's accuracy either), and counts
a step's candidates together (`lookahead`); `dedupe` skips a weight or bias point that quantizes
the tensor as one already evaluated did. The choices stay those of the plain search.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Callable, Hashable, Mapping, Sequence
from typing import Any

import jax
import numpy as np
from absl import logging

from quantjax.quantizers import fixed_point
from quantjax.reports import progress

COMPONENTS = ("weight", "bias", "output")  # searched in this order
PREFIX = {"weight": "kernel", "bias": "bias", "output": "output"}  # quant_state name prefixes
MIN_BITS, MAX_BITS = fixed_point.MIN_BITS, 16  # b = 1: the tensor is dropped (all zeros)
MIN_START_BITS = 2  # start widths: a 1-bit start has nowhere to go


@dataclasses.dataclass(frozen=True, order=True)
class Point:
  """A fixed-point format: `b` bits, `F` fractional bits."""

  bits: int
  frac: int

  def __str__(self) -> str:
    return f"(b={self.bits}, F={self.frac})"


def start_point(max_abs: float, bits: int) -> Point:
  """`(b, F)` with `F = b - 1 - ceil(log2 max|x|)` (`fixed_point.fractional_bits_for`)."""
  return Point(bits, int(fixed_point.fractional_bits_for(max_abs, bits)))


_quantize = jax.jit(fixed_point.fixed_point_quantize)


def identity(max_abs: float) -> Callable[[Point], Hashable]:
  """What a point makes of a tensor whose largest |x| is exactly `max_abs`: points with equal
  identities quantize every element identically (up to the sign of a zero), so the network
  computes the same with either. The step `2^-F` and, if the largest value clips, `b` tell
  them apart; points that round the whole tensor to zero are all alike."""
  top = np.float32(max_abs)

  def of(p: Point) -> Hashable:
    at, whole = (float(_quantize(top, np.float32(b), np.float32(p.frac))) for b in (p.bits, 32))
    if at == 0.0:
      return "zero"
    return (p.frac, "whole") if at == whole else (p.frac, p.bits)

  return of


def budget(component: str, i: int, num_layers: int, threshold: float) -> float:
  """The relative accuracy drop allowed once layer `i` (1-based) of `component` is fixed."""
  if component == "weight":
    return threshold * i / num_layers
  if component == "bias":
    return threshold
  if component == "output":
    return threshold + threshold * i / num_layers
  raise ValueError(f"component={component!r} is not valid; choose one of {', '.join(COMPONENTS)}")


def passes(acc: float, *, acc_fp: float, allowed: float) -> bool:
  """Whether accuracy `acc` is within the relative drop `allowed` of `acc_fp`."""
  return (acc_fp - acc) / acc_fp <= allowed + 1e-12


def _passes_and_at_least(passing: Callable[[float], bool], at_least: float, acc: float) -> bool:
  return passing(acc) and acc >= at_least


def search_point(evaluate: Callable[[Sequence[Point]], Sequence[float]], start: Point, *,
                 acc_fp: float, allowed: float, tradeoff: float = 0.0015,
                 min_bits: int = MIN_BITS, max_bits: int = MAX_BITS,
                 extra_diagonal_step: bool = True,
                 log: Callable[[Point, float], None] | None = None,
                 start_acc: float | None = None, lookahead: bool = False,
                 same: Callable[[Point], Hashable] | None = None,
                 stop_below_current: bool = False) -> tuple[Point, float]:
  """One layer's component: steps (a), (b), (c) of the module docstring.

  Args:
    evaluate: accuracies of the network with this component at each of the given points
      (everything else fixed). Only whether a point passes is read for a point that fails, so
      an evaluator may return any accuracy below the budget for it (an early-stopped count).
    start: the point to start from.
    acc_fp: the float network's accuracy.
    allowed: the relative drop allowed (`budget`).
    tradeoff: relative accuracy gain that pays for the neighbourhood optimum.
    min_bits, max_bits: the widths considered (1: a tensor may be dropped).
    extra_diagonal_step: take one more diagonal step past the first failing point (a).
    log: called with every newly evaluated point and its accuracy.
    start_acc: the accuracy at `start` if already known (it is not evaluated again).
    lookahead: before each step, evaluate all the points it may read in one call (the rest of
      the diagonal, the widths below, the neighbourhood), so an evaluator can count them
      together; some are never read. The choice is the same: the steps read the same points.
    same: each point's `identity`; a point identical to one already evaluated is not evaluated
      again (its accuracy is the same).
    stop_below_current: in (c), with the current point within budget, evaluate the neighbours
      as `evaluate(points, at_least=acc(cur))`: one below the current point's accuracy can be
      neither the move nor, the current point being in the neighbourhood, the optimum, so the
      evaluator may return any accuracy below `at_least` for it (an early-stopped count). The
      choice is the same.

  Returns:
    (the chosen point, its accuracy).
  """
  seen: dict[Point, float] = {} if start_acc is None else {start: start_acc}

  def key(p: Point) -> Hashable:
    return p if same is None else same(p)

  known = {key(p): a for p, a in seen.items()}  # accuracy by identity
  floor: float | None = None  # (c): the accuracy below which a neighbour's count may stop

  def fetch(points: Sequence[Point]) -> None:
    new: dict[Hashable, Point] = {}
    for p in points:
      if p not in seen and key(p) not in known:
        new.setdefault(key(p), p)
    if new:
      pending = list(new.values())
      accs = evaluate(pending) if floor is None else evaluate(pending, at_least=floor)
      for p, a in zip(pending, accs, strict=True):
        known[key(p)] = a
        if log is not None:
          log(p, a)
    for p in points:
      seen.setdefault(p, known[key(p)])

  def ahead(points: Sequence[Point]) -> None:
    if lookahead:
      fetch([p for p in points if min_bits <= p.bits <= max_bits])

  def acc(p: Point) -> float:
    if p not in seen:
      fetch([p])
    return seen[p]

  def ok(p: Point) -> bool:
    return passes(acc(p), acc_fp=acc_fp, allowed=allowed)

  # (a) the diagonal, ordered by falling cost; the lowest-cost passing point is taken.
  ahead([Point(start.bits - j, start.frac - j) for j in range(start.bits - min_bits + 1)])
  diagonal = [start]
  while diagonal[-1].bits > min_bits and ok(diagonal[-1]):
    diagonal.append(Point(diagonal[-1].bits - 1, diagonal[-1].frac - 1))
  if extra_diagonal_step and diagonal[-1].bits > min_bits and not ok(diagonal[-1]):
    diagonal.append(Point(diagonal[-1].bits - 1, diagonal[-1].frac - 1))
  cur = next((p for p in reversed(diagonal) if ok(p)), start)
  if ok(cur):  # (b)
    ahead([Point(b, cur.frac) for b in range(cur.bits - 1, min_bits - 1, -1)])
    while cur.bits > min_bits and ok(nxt := Point(cur.bits - 1, cur.frac)):
      cur = nxt
  # (c) the 3x3 neighbourhood
  if stop_below_current and ok(cur):
    floor = acc(cur)  # exact: a point within budget is counted whole
  around = [Point(cur.bits + db, cur.frac + df) for db in (-1, 0, 1) for df in (-1, 0, 1)]
  ahead(around)
  inside = [p for p in around if min_bits <= p.bits <= max_bits and ok(p)]
  if not inside and not ok(cur) and cur.bits + 4 <= max_bits:
    wider = Point(cur.bits + 4, cur.frac + 4)  # +4 bits, the same range
    return wider, acc(wider)
  if inside:
    best = max(inside, key=lambda p: (acc(p), -p.bits))
    gain = (acc(best) - acc(cur)) / acc_fp
    if not ok(cur) or gain >= tradeoff - 1e-12 or (best.bits <= cur.bits and gain >= 0):
      cur = best
  return cur, acc(cur)


@dataclasses.dataclass
class SearchResult:
  points: dict[tuple[str, str], Point]  # (layer path, component) -> chosen point
  accuracy: float  # validation accuracy of the final configuration
  acc_fp: float
  start_bits: dict[str, int]
  history: list[dict[str, Any]]  # one row per layer and component
  num_evaluations: int
  num_passing: int  # the search's candidate evaluations within their budget (counted whole)
  seconds: float  # wall time
  cpu_seconds: float  # CPU time of this process (all threads), steadier on a shared machine


def search(evaluate: Callable[..., Sequence[float]], max_abs: Mapping[tuple[str, str], float],
           layer_paths: Sequence[str], *, acc_fp: float, threshold: float = 0.005,
           tradeoff: float = 0.0015, start_bits: Mapping[str, int] | None = None,
           min_bits: int = MIN_BITS, extra_diagonal_step: bool = True,
           focus: Callable[[Mapping[tuple[str, str], Point], tuple[str, str]], None] | None = None,
           stop_early: bool = False, lookahead: bool = False, dedupe: bool = False,
           max_tensors: int | None = None) -> SearchResult:
  """Goyal et al.'s search over every (layer, component) in `max_abs`.

  Args:
    evaluate: validation accuracies of configurations (each a dict of every component's point),
      `evaluate(configurations)`; with `stop_early`, `evaluate(configurations, passing=predicate)`
      may stop counting one once `predicate(accuracy)` cannot hold and return any failing
      accuracy for it.
    max_abs: max|x| of each (layer path, component) tensor (kernel, bias, calibration outputs);
      a layer without a bias has no 'bias' entry.
    layer_paths: the layers in network order.
    acc_fp: the float network's validation accuracy.
    threshold: `T`, the relative accuracy drop the budget schedule builds on (0.005 = 0.5 %).
    tradeoff: relative accuracy gain that pays for a wider neighbourhood point (0.0015).
    start_bits: start widths per component; default weights 12, biases 8, activations 12.
    min_bits: the lowest width a point may take (1, the authors'; 2, this project's earlier).
    extra_diagonal_step: the authors' one more diagonal step past the first failure.
    focus: called with the current points and the (layer, component) about to be searched, before
      its candidates are evaluated (an evaluator can cache what the candidates share).
    stop_early: pass `passing` to `evaluate` (see above); in the neighbourhood step (c) a
      neighbour's `passing` also asks for the current point's accuracy (`search_point`'s
      `stop_below_current`). The choices are the same; a chosen point that fails its budget is
      evaluated again in full for its accuracy.
    lookahead: send each step's possible points in one call (`search_point`); same choices.
    dedupe: evaluate a weight or bias point only if no point evaluated before quantizes the
      tensor identically (`identity`; their `max_abs` must then be exactly max|x| of the
      tensor); same choices.
    max_tensors: stop after this many (layer, component) searches (a bounded run, for timing).

  Returns:
    The chosen points, the final validation accuracy and a per-layer history.
  """
  t0, cpu0 = time.perf_counter(), time.process_time()
  evaluations = 0
  num_passing = 0  # candidates within their budget (with stop_early: those counted whole)

  def run(configurations, passing=None):
    nonlocal evaluations
    evaluations += len(configurations)
    if passing is None:
      return evaluate(configurations)
    return evaluate(configurations, passing=passing)

  start_bits = dict(start_bits or {"weight": 12, "bias": 8, "output": 12})
  while True:
    points = {key: start_point(m, start_bits[key[1]]) for key, m in max_abs.items()}
    [acc] = run([points])
    drop = (acc_fp - acc) / acc_fp
    logging.info("fixed-point search: start %s: accuracy %.4f (float %.4f), drop %.3f%% "
                 "(budget %.3f%%)", start_bits, acc, acc_fp, 100 * drop, 100 * threshold)
    if drop <= threshold or max(start_bits.values()) + 4 > MAX_BITS:
      break
    start_bits = {k: b + 4 for k, b in start_bits.items()}

  history = []
  num_layers = len(layer_paths)
  keys_bar = progress.bar(total=len(points), desc="fixed-point search", unit="tensor")
  t_search = time.perf_counter()
  for component in COMPONENTS:
    for i, path in enumerate(layer_paths, start=1):
      key = (path, component)
      if key not in points or (max_tensors is not None and len(history) >= max_tensors):
        continue
      allowed = budget(component, i, num_layers, threshold)
      start, t_layer, before, passed_before = (points[key], time.perf_counter(), evaluations,
                                               num_passing)
      passing = functools.partial(passes, acc_fp=acc_fp, allowed=allowed) if stop_early else None
      if focus is not None:
        focus(points, key)

      def at(candidates, key=key, passing=passing, at_least=None):
        if at_least is not None:  # and within budget: both are monotone in the accuracy
          passing = functools.partial(_passes_and_at_least, passing, at_least)
        return run([{**points, key: p} for p in candidates], passing)

      def log(p, a, path=path, component=component, i=i, allowed=allowed):
        nonlocal num_passing
        num_passing += passes(a, acc_fp=acc_fp, allowed=allowed)
        logging.info("  %s %s (%d/%d) candidate %s: accuracy %.4f, drop %.3f%% (budget %.3f%%)",
                     component, path, i, num_layers, p, a, 100 * (acc_fp - a) / acc_fp,
                     100 * allowed)

      # The start point is the configuration just chosen: its accuracy is known.
      same = identity(max_abs[key]) if dedupe and component != "output" else None
      chosen, acc = search_point(at, start, acc_fp=acc_fp, allowed=allowed, tradeoff=tradeoff,
                                 min_bits=min_bits, extra_diagonal_step=extra_diagonal_step,
                                 log=log, start_acc=acc, lookahead=lookahead, same=same,
                                 stop_below_current=stop_early)
      points[key] = chosen
      if stop_early and not passing(acc):  # an early-stopped count: the exact one for the record
        [acc] = run([points])
      row = {"component": component, "layer": path, "index": i, "start": str(start),
             "bits": chosen.bits, "frac": chosen.frac, "accuracy": acc,
             "drop": (acc_fp - acc) / acc_fp, "budget": allowed,
             "evaluations": evaluations - before, "passing": num_passing - passed_before,
             "seconds": time.perf_counter() - t_layer}
      history.append(row)
      keys_bar.update(1)
      elapsed = time.perf_counter() - t_search
      left = elapsed / len(history) * (len(points) - len(history))
      logging.info("fixed-point search: %s %s (%d/%d): %s -> %s, accuracy %.4f, drop %.3f%% "
                   "(budget %.3f%%), %d evaluations, %.1f s; %d/%d tensors, ~%s left",
                   component, path, i, num_layers, start, chosen, acc, 100 * row["drop"],
                   100 * allowed, row["evaluations"], row["seconds"], len(history),
                   len(points), progress.format_duration(left))
  keys_bar.close()
  return SearchResult(points=points, accuracy=acc, acc_fp=acc_fp, start_bits=start_bits,
                      history=history, num_evaluations=evaluations, num_passing=num_passing,
                      seconds=time.perf_counter() - t0, cpu_seconds=time.process_time() - cpu0)


def quant_state(base: Mapping[str, Any], points: Mapping[tuple[str, str], Point]) -> dict:
  """A copy of `base` ('quant_state' of the plan) with every (layer, component) at its point."""
  state = jax.tree_util.tree_map(lambda v: v, dict(base))  # copies the dicts, shares the leaves
  for (path, component), p in points.items():
    node = state
    for key in path.split("/"):
      node = node[key]
    prefix = PREFIX[component]
    node[f"{prefix}_bits"] = np.float32(p.bits)
    node[f"{prefix}_fractional_bits"] = np.float32(p.frac)
  return state
