"""Exact powers of two and binary exponents from float32 bits, for the log-domain quantizers.

XLA's `exp2`/`log2` are not exact at integers on CPU, and `jnp.ldexp`/`jnp.frexp` handle
subnormals and infinities with many operations per element. Quantizers whose levels are powers of
two (PoT, log, ESB) only need normal float32 numbers, and read or build them from their bits:
a few integer operations per element, exact by construction.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from quantjax.quantizers.base import Array

MANTISSA_BITS = 23  # float32
EXPONENT_BIAS = 127
MANTISSA_MASK = (1 << MANTISSA_BITS) - 1


def power_of_two(e: Array) -> Array:
  """Exactly `2^e` in float32 for integer `e` in [-126, 127], built from its bits; 0 below -126."""
  biased = jnp.clip(jnp.asarray(e).astype(jnp.int32), -EXPONENT_BIAS, EXPONENT_BIAS + 1)
  return jax.lax.bitcast_convert_type(
      jnp.left_shift(biased + EXPONENT_BIAS, MANTISSA_BITS), jnp.float32)


def split(a: Array) -> tuple[Array, Array]:
  """(binary exponent, mantissa bits) of float32 `a >= 0`: `a = (1 + mantissa/2^23)·2^exponent`.

  The exponent is `floor(log2 a)` exactly for normal `a`; zero and subnormals give -127.
  """
  bits = jax.lax.bitcast_convert_type(jnp.asarray(a).astype(jnp.float32), jnp.int32)
  return jnp.right_shift(bits, MANTISSA_BITS) - EXPONENT_BIAS, jnp.bitwise_and(bits, MANTISSA_MASK)


def mantissa_of(value: float) -> int:
  """The mantissa bits of the float32 nearest to `value` (a Python constant)."""
  return int(np.float32(value).view(np.int32)) & MANTISSA_MASK
