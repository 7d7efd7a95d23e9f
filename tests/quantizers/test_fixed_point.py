"""The fixed_point quantizer: Goyal et al.'s Qm.n with b and F as traced variables."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from quantjax import quantizers
from quantjax.quantizers.fixed_point import fixed_point, fixed_point_raw


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
    return fixed_point_raw(x, b, frac)

  x = jnp.array([0.3, -7.0, 5.0, 100.0])
  np.testing.assert_array_equal(f(x, 3.0, -1.0), [0, -6, 4, 6])
  np.testing.assert_array_equal(f(x, 8.0, 0.0), [0, -7, 5, 100])
  np.testing.assert_array_equal(f(x, 2.0, 0.0), [0, -1, 1, 1])
  assert len(traces) == 1


def test_round_half_to_even():
  np.testing.assert_array_equal(fixed_point_raw(jnp.array([0.5, 1.5, 2.5, -0.5]), 8, 0),
                                [0, 2, 2, 0])


def test_clipped_straight_through_gradient():
  x = jnp.array([0.3, -7.0, 5.0, 100.0])
  g = jax.grad(lambda v: jnp.sum(fixed_point(v, 3.0, -1.0, "clipped_ste")))(x)
  np.testing.assert_array_equal(g, [1, 0, 1, 0])  # |x| <= 3·2 = 6 inside
  g = jax.grad(lambda v: jnp.sum(fixed_point(v, 3.0, -1.0, "ste")))(x)
  np.testing.assert_array_equal(g, [1, 1, 1, 1])


@pytest.mark.parametrize("spec", [{"bits": 1}, {"bits": 17}, {"fractional_bits": 1.5},
                                  {"estimator": "lsq"}])
def test_bad_fields(spec):
  with pytest.raises(ValueError, match="FixedPoint"):
    quantizers.from_dict({"name": "fixed_point", **spec})
