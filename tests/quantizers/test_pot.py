"""Power-of-two ('pot'): METHODS.md's baseline window, and equality with 'log' at base 2.

The implementation is `log.Log` with `base_root=1`; its rounding, full-scale, gradient, property
and interceptor tests are in test_log.py (parametrised over 'pot' and 'log').
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from quantjax import quantizers
from quantjax.quantizers import log


def _pot(**fields):
  return quantizers.from_dict({"name": "pot", **fields})


@functools.partial(jax.jit, static_argnums=0)
def _act(q, x):
  state = {"full_scale": jnp.float32(1.0)}
  return q.apply(x, {}, state, "act", False)[0], q.levels({}, state, role="act")


@pytest.mark.parametrize("bits", [2, 3, 4, 6, 8])
def test_window_of_methods_baseline(bits):
  # METHODS.md: values {0} ∪ ±2^e, e in a window of 2^(b-1) - 1 exponents (signed).
  q = _pot(bits=bits)
  levels = np.asarray(_act(q, jnp.zeros(8))[1], np.float64)
  exponents = np.arange(-(2 ** (bits - 1) - 2), 1, dtype=np.float64)
  positive = 2.0**exponents
  np.testing.assert_array_equal(levels, np.concatenate([-positive[::-1], [0.0], positive]))
  assert q.num_exponents == 2 ** (bits - 1) - 1 and q.num_levels == 2**bits - 1
  assert _pot(bits=bits, signed=False).num_exponents == 2**bits - 1


def test_pot_is_log_with_base_two():
  pot, log2 = _pot(bits=4), quantizers.from_dict({"name": "log", "bits": 4, "base_root": 1})
  assert isinstance(pot, log.PowerOfTwo) and isinstance(pot, log.Log) and pot.base_root == 1
  x = jnp.linspace(-2.0, 2.0, 401)
  np.testing.assert_array_equal(_act(pot, x)[0], _act(log2, x)[0])
  # Every output is 0 or ±2^e exactly.
  out = np.abs(np.asarray(_act(pot, x)[0]))
  nonzero = out[out > 0]
  np.testing.assert_array_equal(np.exp2(np.round(np.log2(nonzero))), nonzero)
  assert quantizers.from_dict({"name": "log"}).base_root == 2  # 'log' defaults to base √2


def test_powers_of_two_by_hand():
  # 3 exponents ending at 2^0: levels 0, 1/4, 1/2, 1. Ties go to the even code (0 is code 0,
  # 1/4 code 1, 1/2 code 2, 1 code 3): 1/8 -> 0, 3/8 -> 1/2, 3/4 -> 1/2.
  grid = log._LogGrid(1, 3, False, "ste")
  a = jnp.array([0.1, 0.125, 0.13, 0.3749, 0.375, 0.376, 0.75, 0.76, 1.0, 5.0], jnp.float32)
  np.testing.assert_array_equal(
      log.quantize_magnitude(a, jnp.float32(0.0), grid),
      [0.0, 0.0, 0.25, 0.25, 0.5, 0.5, 0.5, 1.0, 1.0, 1.0])


@pytest.mark.parametrize("width", [1, 2, 3, 7, 15, 127])
def test_bit_path_equals_the_general_path(width):
  """PoT's bit-level rounding against the two-neighbour comparison every base root uses, on
  random magnitudes over 80 octaves, exact powers of two and the ties between them."""
  rng = np.random.default_rng(width)
  octaves = np.arange(-40, 40, dtype=np.float32)
  powers = np.float32(2.0) ** octaves
  a = np.concatenate([
      np.abs(rng.standard_normal(20000) * 10.0 ** rng.uniform(-12, 12, 20000)),
      powers, 1.5 * powers, 0.75 * powers, np.nextafter(1.5 * powers, np.float32(0)),
      np.nextafter(1.5 * powers, np.float32(np.inf)), [0.0]]).astype(np.float32)
  grid = log._LogGrid(1, width, True, "ste")
  general = jax.jit(functools.partial(log._quantize_magnitude_general, m=1, k_floor=None))
  for top in (-30, -3, 0, 1, 17, 39):
    k = jnp.int32(top)
    np.testing.assert_array_equal(
        log.quantize_magnitude(jnp.asarray(a), jnp.float32(top), grid),
        general(jnp.asarray(a), k, k - width + 1), err_msg=f"top={top}")
