"""Fixed point (Qm.n) with traced bit width and fractional bits, for post-training searches.

Goyal, Vanschoren, van Acht, Nijssen, "Fixed-point Quantization of Convolutional Neural Networks
for Quantized Inference on Embedded Platforms", arXiv:2102.02147, 2021 (METHODS.md §4):

  Q(x) = clip(round(x·2^F), -(2^(b-1)-1), 2^(b-1)-1) · 2^-F

symmetric (the code -2^(b-1) unused), round half to even, `F` any integer (negative or above `b`),
`b` from 1 (the only code is 0: the tensor is dropped) to 16. Outputs are exactly `code·2^-F`.
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
import numpy as np

from quantjax.quantizers import codes as codes_lib
from quantjax.quantizers import estimators, floatbits
from quantjax.quantizers.base import Array, Quantizer, Vars, check_bits, check_choice
from quantjax.quantizers.registry import register

MIN_BITS = 1  # a 1-bit symmetric code is only 0: the tensor is dropped (Goyal et al.'s search)


def fractional_bits_for(max_abs: Array | float, bits: int, *, signed: bool = True,
                        strict: bool = False) -> Array:
  """The F of a `bits`-wide Qm.n format sized for max|x|: "the F that does not clip".

  The project's one definition, exact (read from the float's bits, no `log2`):

  - default, METHODS.md §4 (Goyal et al.): the largest F whose range `2^(b-1)·2^-F` holds max|x|,
    `F = b - 1 - ceil(log2 max|x|)`. Its top code `(2^(b-1)-1)·2^-F` can fall below max|x| by
    less than one step (b=8, max|x|=4: F=5, top 127/32), which then clips;
  - `strict=True`: the largest F whose top code is at least max|x| (one less in that case), the
    start of MXQN's SQNR search;
  - `signed=False`: unsigned codes `[0, 2^b-1]` (one more integer bit).

  Args:
    max_abs: max|x| (a scalar or an array of them); zero counts as 1e-30.
    bits: the code width b.
    signed: symmetric signed codes (True) or unsigned ones.
    strict: cover max|x| by the top code itself, not by the format's range.

  Returns:
    F as float32 (an integer value), the shape of `max_abs`.
  """
  range_bits = bits - 1 if signed else bits
  m = jnp.maximum(jnp.asarray(max_abs, jnp.float32), jnp.float32(1e-30))
  exponent, mantissa = floatbits.split(m)
  frac = range_bits - (exponent + (mantissa != 0).astype(jnp.int32))  # ceil(log2 m), exactly
  if strict:  # m·2^F is exact; one step coarser if the top code falls short of m
    top = jnp.float32(2**range_bits - 1)
    frac = frac - (m * floatbits.power_of_two(frac) > top).astype(jnp.int32)
  return frac.astype(jnp.float32)


def fixed_point_quantize(x: Array, bits: Array | int, fractional_bits: Array | int) -> Array:
  """Qm.n: `clip(round(x·2^F), -(2^(b-1)-1), 2^(b-1)-1) · 2^-F` (no gradient rules).

  The project's one definition of the formula. `bits` and `fractional_bits` may be traced
  (integer-valued) arrays, so a search can vary them without recompiling. Both powers of two
  are built from their bits, so every output is exactly an integer code times `2^-F` (XLA's
  `exp2` is not exact at integers on CPU: exp2(-15) != 2^-15). `bits=1` gives all zeros.
  """
  qmax = (floatbits.power_of_two(jnp.asarray(bits) - 1) - 1.0).astype(x.dtype)
  frac = jnp.asarray(fractional_bits)
  codes = jnp.clip(jnp.round(x * floatbits.power_of_two(frac).astype(x.dtype)), -qmax, qmax)
  return codes * floatbits.power_of_two(-frac).astype(x.dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def fixed_point(x: Array, bits: Array, fractional_bits: Array, estimator: str) -> Array:
  """Qm.n fake quantization with straight-through gradients (see the module docstring)."""
  return fixed_point_quantize(x, bits, fractional_bits)


def _fixed_point_fwd(x, bits, fractional_bits, estimator):
  del estimator
  top = (floatbits.power_of_two(jnp.asarray(bits) - 1) - 1.0) * floatbits.power_of_two(
      -jnp.asarray(fractional_bits))
  return (fixed_point_quantize(x, bits, fractional_bits),
          (jnp.abs(x) <= top.astype(x.dtype), bits, fractional_bits))


def _fixed_point_bwd(estimator, residuals, g):
  inside, bits, fractional_bits = residuals
  return (estimators.input_grad(g, inside, estimator), jnp.zeros_like(bits),
          jnp.zeros_like(fractional_bits))


fixed_point.defvjp(_fixed_point_fwd, _fixed_point_bwd)


@register("fixed_point")
@dataclasses.dataclass(frozen=True, kw_only=True)
class FixedPoint(Quantizer):
  """Per-tensor Qm.n whose `b` and `F` are variables ('quant_state'), not compile-time constants."""

  bits: int = 8  # initial code width b (1 to 16; 1 = all zeros); the search changes quant_state
  fractional_bits: int | None = None  # initial F; None = from the max, no clipping
  estimator: str = "clipped_ste"  # 'ste' or 'clipped_ste' for dQ/dx

  def __post_init__(self):
    name = type(self).__name__
    check_bits(name, "bits", self.bits, lo=MIN_BITS)
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

  def levels(self, params: Vars, state: Vars, x: Array | None = None,
             role: str = "weight") -> Array:
    """`code·2^-F`, code in [-(2^(b-1)-1), 2^(b-1)-1]: [2^b - 1] (b and F from a concrete state)."""
    del params, x, role
    qmax = 2 ** (int(np.max(np.asarray(state["bits"]))) - 1) - 1
    codes = jnp.arange(-qmax, qmax + 1, dtype=jnp.float32)
    return codes * floatbits.power_of_two(-jnp.asarray(state["fractional_bits"]))

  def weight_codes(self, kernel, params: Vars, state: Vars) -> codes_lib.WeightCodes:
    """The 'codes' layout: the Qm.n codes themselves, scale `2^-F`, `b` (state) bits."""
    w = jnp.asarray(kernel, jnp.float32)
    scale = codes_lib.per_channel(2.0 ** -np.asarray(state["fractional_bits"], np.float64),
                                  w.shape[-1])
    out = self.fake_quant(w, params, state, "weight")
    values = codes_lib.integer_values(self.describe(), out, scale)
    bits = int(np.max(np.asarray(state["bits"], np.float64)))
    return codes_lib.plain_codes(self.registry_name, values, scale, bits)

  def act_codes(self, params: Vars, state: Vars) -> codes_lib.ActCodes:
    """Uniform codes [-(2^(b-1)-1), 2^(b-1)-1] at scale `2^-F`, no zero point."""
    del params
    bits = int(round(float(np.asarray(state["bits"], np.float64))))
    qmax = 2 ** (bits - 1) - 1
    scale = float(2.0 ** -float(np.asarray(state["fractional_bits"], np.float64)))
    return codes_lib.ActCodes(self.registry_name, "uniform", scale, bits, -qmax, qmax, 0)
