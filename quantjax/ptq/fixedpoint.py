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
   step) while within budget; (b) then `b` alone (same step, clipping) while within budget;
   (c) evaluates the 3×3 neighbourhood of `(b, F)` and moves to its most accurate point within
   budget only if that is at least `tradeoff` (0.15 %, relative to float) more accurate than the
   current point, or no more expensive and not less accurate; else it keeps the cheaper current
   point. A layer whose start point is already over budget and has no neighbour within budget
   gets 4 more bits (same range) once.

Candidates differ only in 'quant_state' values of the `fixed_point` quantizer, so one compiled
evaluation serves the whole search (`quantjax.ptq.evaluator`).
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import numpy as np
from absl import logging

COMPONENTS = ("weight", "bias", "output")  # searched in this order
PREFIX = {"weight": "kernel", "bias": "bias", "output": "output"}  # quant_state name prefixes
MIN_BITS, MAX_BITS = 2, 16


@dataclasses.dataclass(frozen=True, order=True)
class Point:
  """A fixed-point format: `b` bits, `F` fractional bits."""

  bits: int
  frac: int

  def __str__(self) -> str:
    return f"(b={self.bits}, F={self.frac})"


def start_point(max_abs: float, bits: int) -> Point:
  """`(b, F)` with `F = b - 1 - ceil(log2 max|x|)`: the largest step that does not clip max|x|."""
  return Point(bits, int(bits - 1 - math.ceil(math.log2(max(max_abs, 1e-30)))))


def budget(component: str, i: int, num_layers: int, threshold: float) -> float:
  """The relative accuracy drop allowed once layer `i` (1-based) of `component` is fixed."""
  if component == "weight":
    return threshold * i / num_layers
  if component == "bias":
    return threshold
  if component == "output":
    return threshold + threshold * i / num_layers
  raise ValueError(f"component={component!r} is not valid; choose one of {', '.join(COMPONENTS)}")


def search_point(evaluate: Callable[[Point], float], start: Point, *, acc_fp: float,
                 allowed: float, tradeoff: float = 0.0015, min_bits: int = MIN_BITS,
                 max_bits: int = MAX_BITS, log: Callable[[Point, float], None] | None = None,
                 start_acc: float | None = None) -> tuple[Point, float]:
  """One layer's component: steps (a), (b), (c) of the module docstring.

  Args:
    evaluate: accuracy of the network with this component at a point (everything else fixed).
    start: the point to start from.
    acc_fp: the float network's accuracy.
    allowed: the relative drop allowed (`budget`).
    tradeoff: relative accuracy gain that pays for the neighbourhood optimum.
    min_bits, max_bits: the widths considered.
    log: called with every newly evaluated point and its accuracy.
    start_acc: the accuracy at `start` if already known (it is not evaluated again).

  Returns:
    (the chosen point, its accuracy).
  """
  seen: dict[Point, float] = {} if start_acc is None else {start: start_acc}

  def acc(p: Point) -> float:
    if p not in seen:
      seen[p] = evaluate(p)
      if log is not None:
        log(p, seen[p])
    return seen[p]

  def ok(p: Point) -> bool:
    return (acc_fp - acc(p)) / acc_fp <= allowed + 1e-12

  cur = start
  if ok(cur):
    while cur.bits > min_bits and ok(nxt := Point(cur.bits - 1, cur.frac - 1)):  # (a)
      cur = nxt
    while cur.bits > min_bits and ok(nxt := Point(cur.bits - 1, cur.frac)):  # (b)
      cur = nxt
  # (c) the 3x3 neighbourhood
  around = [Point(cur.bits + db, cur.frac + df) for db in (-1, 0, 1) for df in (-1, 0, 1)]
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
  seconds: float  # wall time
  cpu_seconds: float  # CPU time of this process (all threads), steadier on a shared machine


def search(evaluate: Callable[[Mapping[tuple[str, str], Point]], float],
           max_abs: Mapping[tuple[str, str], float], layer_paths: Sequence[str], *,
           acc_fp: float, threshold: float = 0.005, tradeoff: float = 0.0015,
           start_bits: Mapping[str, int] | None = None) -> SearchResult:
  """Goyal et al.'s search over every (layer, component) in `max_abs`.

  Args:
    evaluate: validation accuracy of the network with every component at the given points.
    max_abs: max|x| of each (layer path, component) tensor (kernel, bias, calibration outputs);
      a layer without a bias has no 'bias' entry.
    layer_paths: the layers in network order.
    acc_fp: the float network's validation accuracy.
    threshold: `T`, the relative accuracy drop the budget schedule builds on (0.005 = 0.5 %).
    tradeoff: relative accuracy gain that pays for a wider neighbourhood point (0.0015).
    start_bits: start widths per component; default weights 12, biases 8, activations 12.

  Returns:
    The chosen points, the final validation accuracy and a per-layer history.
  """
  t0, cpu0 = time.perf_counter(), time.process_time()
  evaluations = 0

  def run(points):
    nonlocal evaluations
    evaluations += 1
    return evaluate(points)

  start_bits = dict(start_bits or {"weight": 12, "bias": 8, "output": 12})
  while True:
    points = {key: start_point(m, start_bits[key[1]]) for key, m in max_abs.items()}
    acc = run(points)
    drop = (acc_fp - acc) / acc_fp
    logging.info("fixed-point search: start %s: accuracy %.4f (float %.4f), drop %.3f%% "
                 "(budget %.3f%%)", start_bits, acc, acc_fp, 100 * drop, 100 * threshold)
    if drop <= threshold or max(start_bits.values()) + 4 > MAX_BITS:
      break
    start_bits = {k: b + 4 for k, b in start_bits.items()}

  history = []
  num_layers = len(layer_paths)
  for component in COMPONENTS:
    for i, path in enumerate(layer_paths, start=1):
      key = (path, component)
      if key not in points:
        continue
      allowed = budget(component, i, num_layers, threshold)
      start, t_layer, before = points[key], time.perf_counter(), evaluations

      def at(p, key=key):
        return run({**points, key: p})

      def log(p, a, path=path, component=component, i=i, allowed=allowed):
        logging.info("  %s %s (%d/%d) candidate %s: accuracy %.4f, drop %.3f%% (budget %.3f%%)",
                     component, path, i, num_layers, p, a, 100 * (acc_fp - a) / acc_fp,
                     100 * allowed)

      # The start point is the configuration just chosen: its accuracy is known.
      chosen, acc = search_point(at, start, acc_fp=acc_fp, allowed=allowed, tradeoff=tradeoff,
                                 log=log, start_acc=acc)
      points[key] = chosen
      row = {"component": component, "layer": path, "index": i, "start": str(start),
             "bits": chosen.bits, "frac": chosen.frac, "accuracy": acc,
             "drop": (acc_fp - acc) / acc_fp, "budget": allowed,
             "evaluations": evaluations - before, "seconds": time.perf_counter() - t_layer}
      history.append(row)
      logging.info("fixed-point search: %s %s (%d/%d): %s -> %s, accuracy %.4f, drop %.3f%% "
                   "(budget %.3f%%), %d evaluations, %.1f s", component, path, i, num_layers,
                   start, chosen, acc, 100 * row["drop"], 100 * allowed, row["evaluations"],
                   row["seconds"])
  return SearchResult(points=points, accuracy=acc, acc_fp=acc_fp, start_bits=start_bits,
                      history=history, num_evaluations=evaluations,
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
