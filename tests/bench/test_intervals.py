"""bench/intervals.py: the median's order-statistic interval, worked by hand, and the verdicts."""

import pytest

from bench.intervals import median_interval, verdict


def test_nine_values_hold_the_median_between_the_second_and_eighth():
  # P(at most 1 of 9 below the median) = (1 + 9) / 512, so [x_(2), x_(8)] covers 1 - 20/512;
  # [x_(3), x_(7)] would cover only 1 - 2 * 46/512 = 0.8203.
  xs = [1.09, 1.01, 1.50, 1.03, 0.99, 1.02, 1.04, 1.00, 1.05]  # one noise spike (1.50)
  assert median_interval(xs) == (1.00, 1.09, 1 - 20 / 512)


def test_few_values_give_their_range_with_its_lower_coverage():
  assert median_interval([3.0, 1.0, 2.0, 5.0, 4.0]) == (1.0, 5.0, 1 - 2 / 32)
  assert median_interval([2.0]) == (2.0, 2.0, 0.0)
  # Six values: the range first reaches 95 % (1 - 2/64).
  assert median_interval(range(6)) == (0, 5, 1 - 2 / 64)
  # Seventeen: [x_(5), x_(13)], 1 - 2 * (1 + 17 + 136 + 680 + 2380) / 2^17 = 0.95096; one
  # step further in, [x_(6), x_(12)], would cover 1 - 2 * 9402 / 2^17 = 0.8565.
  assert median_interval(range(17)) == (4, 12, 1 - 2 * 3214 / 2**17)
  with pytest.raises(ValueError, match="at least one value"):
    median_interval([])


def test_verdict_needs_the_whole_interval():
  assert verdict(1.01, 1.02, at_most=1.03) == "met"
  assert verdict(1.01, 1.04, at_most=1.03) == "undecided"
  assert verdict(1.04, 1.08, at_most=1.03) == "NOT met"
  assert verdict(0.92, 0.98, at_least=0.9) == "met"
  assert verdict(0.85, 0.95, at_least=0.9) == "undecided"
  assert verdict(0.70, 0.85, at_least=0.9) == "NOT met"
  with pytest.raises(ValueError, match="exactly one"):
    verdict(1.0, 1.1)
