"""The fixed_point quantizer: Goyal et al.'s Qm.n with b and F as traced variables."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from quantjax import quantizers
from quantjax.quantizers.fixed_point import fixed_point, fixed_point_quantize, fractional_bits_for


def test_methods_example():
  # METHODS.md §4: (b=3, F=-1) maps [0.3, -7, 5, 100] to [0, -6, 4, 6].
  q = quantizers.from_dict({"name": "fixed_point", "bits": 3, "fractional_bits": -1})
  x = jnp.array([0.3, -7.0, 5.0, 100.0])
  params, state = q.init(x, "weight")
  np.testing.assert_array_equal(q.apply(x, params, state, "weight", False)[0], [0, -6, 4, 6])


def test_initial_fraction_from_max_does_not_clip():
  q = quantizers.from_dict({"name": "fixed_point", "bits": 5})
  x = jnp.array([0.1, -2.9, 1.0])  # ceil(log2 2.9) = 2 -> F = 5 - 1 - 2 = 2, step 0.25
  _, state = q.init(x, "act")
  assert float(state["fractional_bits"]) == 2.0 and float(state["bits"]) == 5.0
  np.testing.assert_array_equal(q.apply(x, {}, state, "act", False)[0], [0.0, -3.0, 1.0])


def test_traced_bits_and_fraction_compile_once():
  traces = []

  @jax.jit
  def f(x, b, frac):
    traces.append(1)
    return fixed_point_quantize(x, b, frac)

  x = jnp.array([0.3, -7.0, 5.0, 100.0])
  np.testing.assert_array_equal(f(x, 3.0, -1.0), [0, -6, 4, 6])
  np.testing.assert_array_equal(f(x, 8.0, 0.0), [0, -7, 5, 100])
  np.testing.assert_array_equal(f(x, 2.0, 0.0), [0, -1, 1, 1])
  assert len(traces) == 1


def test_round_half_to_even():
  np.testing.assert_array_equal(fixed_point_quantize(jnp.array([0.5, 1.5, 2.5, -0.5]), 8, 0),
                                [0, 2, 2, 0])


def test_clipped_straight_through_gradient():
  x = jnp.array([0.3, -7.0, 5.0, 100.0])
  g = jax.grad(lambda v: jnp.sum(fixed_point(v, 3.0, -1.0, "clipped_ste")))(x)
  np.testing.assert_array_equal(g, [1, 0, 1, 0])  # |x| <= 3·2 = 6 inside
  g = jax.grad(lambda v: jnp.sum(fixed_point(v, 3.0, -1.0, "ste")))(x)
  np.testing.assert_array_equal(g, [1, 1, 1, 1])


@pytest.mark.parametrize("spec", [{"bits": 0}, {"bits": 17}, {"fractional_bits": 1.5},
                                  {"estimator": "lsq"}])
def test_bad_fields(spec):
  with pytest.raises(ValueError, match="FixedPoint"):
    quantizers.from_dict({"name": "fixed_point", **spec})


def _exact_codes(x: np.ndarray, bits: int, frac: int) -> np.ndarray:
  """The Qm.n codes of float32 `x`, computed exactly in float64: x·2^F is exact there."""
  qmax = 2 ** (bits - 1) - 1
  return np.clip(np.round(np.ldexp(x.astype(np.float64), frac)), -qmax, qmax)  # half to even


@settings(max_examples=150, deadline=None)
@given(st.integers(2, 16), st.integers(-8, 24),
       st.lists(st.floats(-1.5, 1.5, width=32), min_size=1, max_size=16), st.booleans())
def test_every_output_is_an_integer_code_times_two_to_minus_f(bits, frac, unit, traced):
  """Qm.n lies exactly on its grid: out = code·2^-F, code an integer in [-(2^(b-1)-1), 2^(b-1)-1].

  `unit` spans ±1.5 of the clip range, so both the inside and the clipped codes are covered;
  both the traced-(b, F) quantizer and the static `uniform` power-of-two step are checked.
  """
  qmax = 2 ** (bits - 1) - 1
  x = np.float32(np.asarray(unit, np.float32) * np.float32(qmax) * np.float32(2.0**-frac))
  x = np.atleast_1d(x).astype(np.float32)
  if traced:
    q = quantizers.from_dict({"name": "fixed_point", "bits": bits, "fractional_bits": frac})
    out = q.apply(jnp.asarray(x), *q.init(jnp.asarray(x), "weight"), "weight", False)[0]
  else:
    q = quantizers.from_dict({"name": "uniform", "bits": bits, "scale_method": "pow2",
                              "fractional_bits": frac})
    out = q.apply(jnp.asarray(x), {}, {}, "weight", False)[0]
  out = np.asarray(out).astype(np.float64)
  codes = np.ldexp(out, frac)  # exact: out is a float32 scaled by a power of two
  np.testing.assert_array_equal(codes, np.round(codes))  # integers
  assert np.all(np.abs(codes) <= qmax)
  np.testing.assert_array_equal(codes, _exact_codes(x, bits, frac))
  np.testing.assert_array_equal(out, np.ldexp(codes, -frac))


def test_fractional_bits_for_hand_worked():
  f = lambda m, b, **kw: int(fractional_bits_for(m, b, **kw))  # noqa: E731
  assert f(2.9, 12) == 9  # ceil(log2 2.9) = 2
  assert f(4.0, 8) == 5  # Goyal's rule: the range 2^7·2^-5 = 4 holds 4 (top code 127/32 clips)
  assert f(4.0, 8, strict=True) == 4  # the top code 127/16 holds 4
  assert f(3.9, 8, strict=True) == 5  # 127/32 = 3.97 >= 3.9
  assert f(4.0, 8, signed=False) == 6 and f(4.0, 8, signed=False, strict=True) == 5  # 255/64 < 4
  # Exact at powers of two, where log2 is not: 2^-13 needs F = b - 1 + 13.
  assert [f(2.0**-e, 8) for e in (13, 15, 17, 23)] == [20, 22, 24, 30]
  assert [f(2.0**e, 16) for e in (13, 15, 17, 23)] == [2, 0, -2, -8]
  assert f(0.0, 8) == 7 + 99  # zero counts as 1e-30 (ceil(log2 1e-30) = -99)
  np.testing.assert_array_equal(fractional_bits_for(jnp.array([0.2, 5.0]), 3), [4.0, -1.0])


def test_one_bit_drops_the_tensor():
  q = quantizers.from_dict({"name": "fixed_point", "bits": 1, "fractional_bits": 0})
  x = jnp.array([0.3, -7.0, 5.0, 100.0])
  out = q.apply(x, *q.init(x, "weight"), "weight", False)[0]
  np.testing.assert_array_equal(out, [0, 0, 0, 0])
  np.testing.assert_array_equal(fixed_point_quantize(x, jnp.float32(1.0), 3.0), [0, 0, 0, 0])
