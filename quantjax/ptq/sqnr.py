"""Signal-to-quantization-noise ratio of any quantizer on a tensor (MXQN, METHODS.md §2).

`SQNR_dB(x, Q) = 10·log10(Σx² / Σ(x - Q(x))²)`; +inf when Q is exact on x.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from quantjax.quantizers.base import Quantizer


def sqnr_db(x: jax.Array, q: jax.Array) -> float:
  """`10·log10(Σx² / Σ(x - q)²)` in decibels (float64 sums on the host)."""
  x = np.asarray(x, np.float64)
  noise = np.sum(np.square(x - np.asarray(q, np.float64)))
  signal = np.sum(np.square(x))
  if noise == 0.0:
    return float("inf")
  if signal == 0.0:
    return float("-inf")
  return float(10.0 * np.log10(signal / noise))


JIT_MIN_SIZE = 1 << 16  # smaller tensors run op by op: compiling each candidate costs more


def _quantize(quantizer: Quantizer, x: jax.Array, role: str) -> jax.Array:
  params, state = quantizer.init(x, role)
  return quantizer.apply(x, params, state, role, False)[0]


_quantize_jit = jax.jit(_quantize, static_argnums=(0, 2))


def quantize_tensor(quantizer: Quantizer, x: jax.Array, role: str) -> jax.Array:
  """`Q(x)` with the quantizer's variables initialised from `x` itself (as calibration does)."""
  x = jnp.asarray(x, jnp.float32)
  return (_quantize_jit if x.size >= JIT_MIN_SIZE else _quantize)(quantizer, x, role)


def quantizer_sqnr(quantizer: Quantizer, x: jax.Array, role: str) -> float:
  """SQNR in dB of `quantizer` on `x` (a kernel for role 'weight', a batch for 'act')."""
  return sqnr_db(x, quantize_tensor(quantizer, x, role))
