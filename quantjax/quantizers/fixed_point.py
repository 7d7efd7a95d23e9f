"""Fixed point (Qm.n) with traced bit width and fractional bits, for post-training searches.

Goyal, Vanschoren, van Acht, Nijssen, "Fixed-point Quantization of Convolutional Neural Networks
for Quantized Inference on Embedded Platforms", arXiv:2102.02147, 2021 (METHODS.md §4):

  Q(x) = clip(round(x·2^F), -(2^(b-1)-1), 2^(b-1)-1) · 2^-F

symmetric (the code -2^(b-1) unused), round half to even, `F` any integer (negative or above `b`).
Unlike `uniform` with `scale_method='pow2'`, `b` and `F` are not part of the (static) config but
live in the layer's 'quant_state' (`bits`, `fractional_bits`), so a search can change them in the
variables and reuse one compiled forward pass. The config's `bits` and `fractional_bits` are only
the initial values (and what reports show): `fractional_bits=None` starts from
`F = b - 1 - ceil(log2 max|x|)` of the tensor `init` sees (no clipping).

Gradient: straight-through, zero outside the clip range ('clipped_ste') or everywhere passed
('ste'); `b` and `F` get none.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp

from quantjax.quantizers import estimators
from quantjax.quantizers.base import Array, Quantizer, Vars, check_bits, check_choice
from quantjax.quantizers.registry import register
from quantjax.quantizers.uniform import fractional_bits_for


def fixed_point_raw(x: Array, bits: Array, fractional_bits: Array) -> Array:
  """Qm.n of `x` with (possibly traced) `bits` and `fractional_bits` (no gradient rules)."""
  bits = jnp.asarray(bits, jnp.float32)
  qmax = (jnp.exp2(bits - 1.0) - 1.0).astype(x.dtype)
  step = jnp.exp2(-jnp.asarray(fractional_bits, jnp.float32)).astype(x.dtype)
  return jnp.clip(jnp.round(x / step), -qmax, qmax) * step


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def fixed_point(x: Array, bits: Array, fractional_bits: Array, estimator: str) -> Array:
  """Qm.n fake quantization with straight-through gradients (see the module docstring)."""
  return fixed_point_raw(x, bits, fractional_bits)


def _fixed_point_fwd(x, bits, fractional_bits, estimator):
  del estimator
  top = (jnp.exp2(jnp.asarray(bits, jnp.float32) - 1.0) - 1.0) * jnp.exp2(
      -jnp.asarray(fractional_bits, jnp.float32))
  return fixed_point_raw(x, bits, fractional_bits), (jnp.abs(x) <= top, bits, fractional_bits)


def _fixed_point_bwd(estimator, residuals, g):
  inside, bits, fractional_bits = residuals
  return (estimators.input_grad(g, inside, estimator), jnp.zeros_like(bits),
          jnp.zeros_like(fractional_bits))


fixed_point.defvjp(_fixed_point_fwd, _fixed_point_bwd)


@register("fixed_point")
@dataclasses.dataclass(frozen=True, kw_only=True)
class FixedPoint(Quantizer):
  """Per-tensor Qm.n whose `b` and `F` are variables ('quant_state'), not compile-time constants."""

  bits: int = 8  # initial code width b (2 to 16); the search changes quant_state['bits']
  fractional_bits: int | None = None  # initial F; None = from the max, no clipping
  estimator: str = "clipped_ste"  # 'ste' or 'clipped_ste' for dQ/dx

  def __post_init__(self):
    name = type(self).__name__
    check_bits(name, "bits", self.bits)
    check_choice(name, "estimator", self.estimator, estimators.ESTIMATORS)
    f = self.fractional_bits
    if f is not None and (not isinstance(f, int) or isinstance(f, bool) or abs(f) > 64):
      raise ValueError(f"{name}.fractional_bits={f!r} is out of range; valid: None or integers "
                       "-64 to 64")

  def describe(self) -> str:
    frac = "" if self.fractional_bits is None else f"/F{self.fractional_bits}"
    return f"fixed_point{self.bits}{frac}"

  def init(self, x: Array, role: str) -> tuple[Vars, Vars]:
    self.validate_role(role)
    if self.fractional_bits is None:
      frac = fractional_bits_for(jnp.max(jnp.abs(jax.lax.stop_gradient(x))), self.bits)
    else:
      frac = self.fractional_bits
    return {}, {"bits": jnp.asarray(self.bits, jnp.float32),
                "fractional_bits": jnp.asarray(frac, jnp.float32)}

  def apply(
      self, x: Array, params: Vars, state: Vars, role: str, training: bool
  ) -> tuple[Array, Vars]:
    del params, role, training
    bits = jax.lax.stop_gradient(state["bits"])
    frac = jax.lax.stop_gradient(state["fractional_bits"])
    return fixed_point(x, bits, frac, self.estimator), state
