"""Uniform / fixed-point quantizer: exact levels, rounding, ranges, gradients, properties."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from quantjax import quantizers
from quantjax.quantizers import fixed_point


def _q(x, **fields):
  q = quantizers.from_dict({"name": "uniform", **fields})
  return np.asarray(q.apply(jnp.asarray(x, jnp.float32), {}, {}, "weight", False)[0])


def test_fixed_point_example_of_goyal():
  # METHODS.md §4: (b=3, F=-1) maps [0.3, -7, 5, 100] to [0, -6, 4, 6].
  x = [0.3, -7.0, 5.0, 100.0]
  np.testing.assert_array_equal(_q(x, bits=3, scale_method="pow2", fractional_bits=-1),
                                [0.0, -6.0, 4.0, 6.0])
  np.testing.assert_array_equal(fixed_point.fixed_point_quantize(jnp.array(x), 3, -1),
                                [0, -6, 4, 6])


def test_fixed_point_fraction_larger_than_bits():
  # b=4, F=6: step 1/64, codes [-7, 7] so the range is ±7/64.
  out = _q([0.01, 0.05, -1.0, 3 / 128], bits=4, scale_method="pow2", fractional_bits=6)
  np.testing.assert_array_equal(out, [1 / 64, 3 / 64, -7 / 64, 2 / 64])  # 1.5 -> 2 (half to even)


def test_fixed_point_fraction_from_max_does_not_clip():
  # max|x| = 5 -> F = 3 - 1 - ceil(log2 5) = -1: step 2, codes [-3, 3].
  x = jnp.array([5.0, -3.0, 0.9])
  f = fixed_point.fractional_bits_for(jnp.max(jnp.abs(x)), 3)
  assert float(f) == -1.0
  np.testing.assert_array_equal(_q(x, bits=3, scale_method="pow2"), [4.0, -4.0, 0.0])


def test_symmetric_max_levels_are_narrow_range():
  # bits=3, max 3 -> step 1, codes -3..3; -3.5 clips? no: max|x| is 3.5 -> step 3.5/3.
  x = np.array([-3.0, -1.4, -0.5, 0.5, 1.5, 2.5, 3.0], np.float32)
  out = _q(x, bits=3)
  np.testing.assert_allclose(out, [-3, -1, -0, 0, 2, 2, 3])  # half to even: 0.5->0, 1.5->2, 2.5->2


def test_unsigned_codes_use_full_range():
  q = quantizers.from_dict({"name": "uniform", "bits": 2, "signed": False})
  x = jnp.array([0.0, 0.4, 1.0, 2.0, 3.0, 2.6])
  out, _ = q.apply(x, {}, q.init(x, "act")[1], "act", False)
  np.testing.assert_allclose(out, [0, 0, 1, 2, 3, 3])
  assert (q.qmin, q.qmax) == (0, 3)


def test_affine_zero_point_represents_zero_exactly():
  q = quantizers.from_dict({"name": "uniform", "bits": 4, "symmetric": False})
  x = jnp.array([-1.0, 0.0, 0.3, 2.0])
  out = np.asarray(q.apply(x, {}, {}, "weight", False)[0])
  step = 3.0 / 15
  assert out[1] == 0.0
  np.testing.assert_allclose(out[[0, 3]], [-1.0, 2.0], atol=step / 2 + 1e-6)
  # 16 levels spanning [-1, 2] with zero on the grid.
  levels = np.asarray(q.levels({}, {}, x))
  assert len(levels) == 16 and np.isclose(levels, 0.0).any()


def test_per_channel_uses_each_channels_max():
  w = jnp.array([[1.0, 10.0], [-0.4, 6.0]])  # [in, out]: channel maxes 1 and 10
  out = _q(w, bits=3, granularity="channel")
  np.testing.assert_allclose(out, [[1.0, 10.0], [-1 / 3, 10 / 3 * 2]], rtol=1e-6)


def test_percentile_clips_outliers():
  x = jnp.concatenate([jnp.linspace(-1, 1, 999), jnp.array([100.0])])
  out = _q(x, bits=8, scale_method="percentile", percentile=99.0)
  assert np.max(np.abs(out)) < 1.01


def test_mse_search_beats_max_on_heavy_tails():
  x = jax.random.laplace(jax.random.key(0), (4096,))
  err = {m: float(np.mean((_q(x, bits=3, scale_method=m) - np.asarray(x)) ** 2))
         for m in ("max", "mse")}
  assert err["mse"] < 0.7 * err["max"]


@pytest.mark.parametrize("bits", [2, 3, 4, 8, 16])
def test_level_count_and_range(bits):
  x = jnp.linspace(-2.0, 2.0, 70001)
  out = _q(x, bits=bits)
  distinct = np.unique(out)
  assert len(distinct) == min(2**bits - 1, len(x))
  np.testing.assert_allclose(distinct.max(), 2.0, rtol=1e-6)


@pytest.mark.parametrize(
    ("fields", "match"),
    [({"bits": 1}, "bits=1 is out of range"),
     ({"bits": 17}, "bits=17 is out of range"),
     ({"bits": 4.5}, "bits=4.5"),
     ({"scale_method": "magic"}, "scale_method='magic'.*max, percentile, mse, lsq, pow2"),
     ({"granularity": "row"}, "granularity='row'"),
     ({"colour": 3}, "no field.*colour.*valid fields"),
     ({"scale_method": "pow2", "symmetric": False}, "pow2")],
)
def test_bad_configs_raise_one_line_errors(fields, match):
  with pytest.raises(ValueError, match=match) as e:
    quantizers.from_dict({"name": "uniform", **fields})
  assert "\n" not in str(e.value)


def test_unknown_quantizer_lists_valid_names():
  with pytest.raises(ValueError, match="unknown quantizer 'unifrom'; valid quantizers: .*uniform"):
    quantizers.from_dict({"name": "unifrom"})


def test_per_channel_activations_rejected():
  q = quantizers.from_dict({"name": "uniform", "granularity": "channel"})
  with pytest.raises(ValueError, match="weights only"):
    q.validate_role("act")


# -- gradients -----------------------------------------------------------------------------------


def _ste_reference(q_fn, x):
  return x + jax.lax.stop_gradient(q_fn(x) - x)


@pytest.mark.parametrize("estimator", ["ste", "clipped_ste"])
def test_input_gradient_matches_straight_through_reference(estimator):
  q = quantizers.from_dict({"name": "uniform", "bits": 3, "estimator": estimator,
                            "scale_method": "pow2", "fractional_bits": 1})
  x = jnp.array([-9.0, -1.3, 0.2, 0.74, 3.0, 3.5, 5.0])  # codes clip at ±3 (±1.5)
  upstream = jnp.arange(1.0, 8.0)
  fq = lambda v: q.apply(v, {}, {}, "weight", True)[0]  # noqa: E731
  got = jax.grad(lambda v: jnp.sum(fq(v) * upstream))(x)
  ref = jax.grad(lambda v: jnp.sum(_ste_reference(fq, v) * upstream))(x)
  if estimator == "ste":
    np.testing.assert_array_equal(got, ref)
  else:
    inside = np.abs(np.asarray(x) * 2) <= 3
    np.testing.assert_array_equal(got, np.where(inside, ref, 0.0))


def test_lsq_step_gradient_hand_worked():
  # LSQ: dQ/ds = round(x/s) - x/s inside, clip code outside; scaled by 1/sqrt(N * Qp).
  q = quantizers.from_dict({"name": "uniform", "bits": 3, "scale_method": "lsq"})
  x = jnp.array([0.3, 1.2, -5.0])  # s = 1: codes 0, 1, -3 (clipped)
  grad = jax.grad(lambda s: jnp.sum(q.apply(x, {"scale": s}, {}, "weight", True)[0]))(1.0)
  expected = ((0 - 0.3) + (1 - 1.2) + (-3)) / np.sqrt(3 * 3)
  np.testing.assert_allclose(grad, expected, rtol=1e-6)
  dx = jax.grad(lambda v: jnp.sum(q.apply(v, {"scale": 1.0}, {}, "weight", True)[0]))(x)
  np.testing.assert_array_equal(dx, [1.0, 1.0, 0.0])


def test_lsq_init_is_two_mean_abs_over_sqrt_qp():
  q = quantizers.from_dict({"name": "uniform", "bits": 4, "scale_method": "lsq"})
  x = jnp.array([1.0, -3.0, 2.0])
  params, _ = q.init(x, "weight")
  np.testing.assert_allclose(params["scale"], 2 * 2.0 / np.sqrt(7), rtol=1e-6)


def test_activation_range_moving_average():
  q = quantizers.from_dict({"name": "uniform", "bits": 8, "signed": False, "momentum": 0.5})
  _, state = q.init(jnp.array([0.0, 2.0]), "act")
  assert float(state["range_hi"]) == 2.0
  _, new = q.apply(jnp.array([0.0, 4.0]), {}, state, "act", True)
  assert float(new["range_hi"]) == 3.0
  _, same = q.apply(jnp.array([0.0, 4.0]), {}, state, "act", False)
  assert float(same["range_hi"]) == 2.0


# -- properties ----------------------------------------------------------------------------------

finite = st.floats(-50, 50, allow_nan=False, width=32)


@settings(max_examples=40, deadline=None)
@given(st.lists(finite, min_size=2, max_size=64), st.sampled_from([2, 3, 4, 8]),
       st.sampled_from(["max", "pow2", "percentile"]))
def test_properties(values, bits, method):
  x = jnp.asarray(values, jnp.float32)
  q = quantizers.from_dict({"name": "uniform", "bits": bits, "scale_method": method})
  out = np.asarray(q.apply(x, {}, {}, "weight", False)[0])
  # Monotone non-decreasing.
  order = np.argsort(np.asarray(x), kind="stable")
  assert np.all(np.diff(out[order]) >= 0)
  # At most 2^b - 1 distinct values, all on the grid of the tensor's step.
  assert len(np.unique(out)) <= 2**bits - 1
  levels = np.asarray(q.levels({}, {}, x))
  assert np.all(np.min(np.abs(out[:, None] - levels[None, :]), axis=1) <= 1e-5 * (1 + np.abs(out)))
  # Idempotent for a fixed grid: Q_F(Q_F(x)) = Q_F(x). (A step re-derived from the output's own
  # max may differ, e.g. F from max|x| = 1 clips 1 to 0.5, whose F is larger.)
  fixed = quantizers.from_dict({"name": "uniform", "bits": bits, "scale_method": "pow2",
                                "fractional_bits": 2})
  once = fixed.apply(x, {}, {}, "weight", False)[0]
  np.testing.assert_array_equal(fixed.apply(once, {}, {}, "weight", False)[0], once)
