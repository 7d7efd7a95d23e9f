"""Gradient estimators shared by the quantizers' custom VJPs.

- 'ste': straight-through, dQ/dx = 1 everywhere (Bengio et al. 2013).
- 'clipped_ste': straight-through inside the representable range, 0 outside it.
- LSQ's gradient for a learned step (Esser et al. 2020, "Learned Step Size Quantization"):
  dQ/ds = round(x/s) - x/s inside the range, the clip code outside it, scaled by 1/sqrt(N*Qp).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

ESTIMATORS = ("ste", "clipped_ste")


def input_grad(g: jax.Array, inside: jax.Array, estimator: str) -> jax.Array:
  """Gradient passed to the quantizer's input given its output gradient `g`."""
  if estimator == "ste":
    return g
  if estimator == "clipped_ste":
    return jnp.where(inside, g, jnp.zeros_like(g))
  raise ValueError(f"estimator={estimator!r} is not valid; choose one of {', '.join(ESTIMATORS)}")


def lsq_grad_scale(num_per_scale: int, qmax: int) -> float:
  """LSQ's gradient scale 1/sqrt(N * Qp), N the number of values sharing one step."""
  return 1.0 / math.sqrt(max(num_per_scale, 1) * max(qmax, 1))
