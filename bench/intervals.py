"""How precisely a benchmark's median ratio is known, and whether that decides a target.

A ratio taken within each interleaved repetition (quantized step over float step, emulator over
float) varies from one repetition to the next with the machine. The benches report its median;
`median_interval` gives the distribution-free interval of that median from the order statistics
(the binomial sign test: no assumption on how the repetitions are distributed, a noise spike
counts once), and `verdict` reads a target from it, as the accuracy claims are read from their
paired intervals (bench/accuracy_table.py): a target is met or missed only when the whole interval
says so, else it is undecided at this number of repetitions.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

CONFIDENCE = 0.95


def median_interval(xs: Sequence[float],
                    confidence: float = CONFIDENCE) -> tuple[float, float, float]:
  """(lo, hi, coverage): the order statistics x_(k) and x_(n+1-k) of `xs` that hold the median
  with probability `coverage` >= `confidence`, for the largest such k. Below 6 values no pair
  reaches 95 %; the range (min, max) is returned with the coverage it has (5 values: 93.75 %)."""
  xs = sorted(xs)
  n = len(xs)
  if n == 0:
    raise ValueError("median_interval() needs at least one value")

  def coverage(k: int) -> float:  # of [x_(k), x_(n+1-k)]: 1 - 2 P(fewer than k fall below)
    return 1 - 2 * sum(math.comb(n, i) for i in range(k)) / 2**n

  k = 1  # at least the range
  while k < n // 2 and coverage(k + 1) >= confidence:
    k += 1
  return xs[k - 1], xs[n - k], coverage(k)


def verdict(lo: float, hi: float, *, at_most: float | None = None,
            at_least: float | None = None) -> str:
  """'met', 'NOT met' or 'undecided' for a target `value <= at_most` (or `value >= at_least`)
  given the value's interval [lo, hi]."""
  if (at_most is None) == (at_least is None):
    raise ValueError("verdict() takes exactly one of at_most, at_least")
  if at_most is not None:
    return "met" if hi <= at_most else "NOT met" if lo > at_most else "undecided"
  return "met" if lo >= at_least else "NOT met" if hi < at_least else "undecided"
