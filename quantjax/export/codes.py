"""Integer codes of one quantized tensor: a trained quantizer's output as integers and one scale.

Every quantizer of the project represents a value as `scale · v` with `v` an integer (per tensor,
or per output channel for weights). This module recovers `(v, scale)` from a quantizer and its
variables, checks that `scale · v` reproduces the fake-quantized tensor, and describes how the
integers are stored and multiplied:

- uniform / fixed_point / pact: `v` is the code itself (less the zero point); a `b_w × b_a`
  integer multiplier.
- nuuq / liss: `v = table[index]`, the table the layer's N (or 2^b) b-bit (M-bit) integers; a
  table look-up then an integer multiplier.
- esb: `v = q·2^L` (`q` the level in units of α, L the mantissa bits), stored as sign, exponent and
  mantissa fields: IEEE-like with denormals, `f = 0: v = mant`, `f >= 1: v = (2^L + mant) << (f-1)`
  (the E = 1 mid-rise form stores `v = ±(2i+1)` as a sign and the index i). A `k×k` significand
  product and an exponent add (a shift).
- pot (and log with base_root 1): `v = ±(1 << (c-1))`, c >= 1 the magnitude code (0 = zero),
  stored as sign and exponent code; the product is a shift.

Activations are described by `ActCodes`: 'uniform' codes (a dyadic requantization reaches them)
or a 'table' of ascending distinct integer values (reached by comparing with integer thresholds).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax.numpy as jnp
import numpy as np

from quantjax.quantizers import esb as esb_lib
from quantjax.quantizers.base import Quantizer

WEIGHT_FAMILIES = ("uniform", "fixed_point", "nuuq", "liss", "esb", "pot", "log")
ACT_FAMILIES = ("uniform", "fixed_point", "pact", "liss", "esb", "pot", "log")
_REL_TOL = 1e-5  # |scale·v - Q(x)| allowed, relative to max|Q(x)| (float32 arithmetic in Q)


@dataclasses.dataclass
class WeightCodes:
  """A layer's kernel as integers: `kernel ≈ scale[c] · values[..., c]` (c = output channel)."""

  family: str
  values: np.ndarray  # int64, the kernel's shape: the integers the multiplier sees
  scale: np.ndarray  # float64 [C_out]
  fields: dict[str, tuple[np.ndarray, int, bool]]  # stored fields: name -> (ints, bits, signed)
  multiplier: str  # 'int' | 'table_int' | 'mantissa_shift' | 'shift'
  multiplier_bits: int  # operand width of the multiplier (significand bits for mantissa_shift)
  stored_bits: float  # bits per weight on disk (fields together, tables excluded)
  meta: dict[str, Any] = dataclasses.field(default_factory=dict)  # decoding constants (JSON)


@dataclasses.dataclass
class ActCodes:
  """An activation quantizer's codes: real value `scale · value(code)`."""

  family: str
  kind: str  # 'uniform': value = code - zero_point in [qmin, qmax]; 'table': table[code]
  scale: float
  bits: int  # stored code width
  qmin: int = 0
  qmax: int = 0
  zero_point: int = 0
  table: np.ndarray | None = None  # 'table': int64 ascending distinct values

  def values(self) -> np.ndarray:
    """Every representable integer value, ascending."""
    if self.kind == "table":
      return self.table
    return np.arange(self.qmin, self.qmax + 1, dtype=np.int64) - self.zero_point

  @property
  def value_bits(self) -> int:
    """Width of the value as a multiplier operand (two's complement if any value is negative)."""
    return int_bits(self.values())


def int_bits(values: np.ndarray) -> int:
  """Bits of the narrowest integer type holding `values` (signed if any is negative)."""
  lo, hi = int(np.min(values)), int(np.max(values))
  if lo >= 0:
    return max(hi.bit_length(), 1)
  return max(hi.bit_length(), (-lo - 1).bit_length()) + 1


def _family(q: Quantizer) -> str:
  return q.registry_name


def _np(x) -> np.ndarray:
  return np.asarray(x, np.float64)


def _split(variables: dict[str, Any], prefix: str) -> tuple[dict, dict]:
  """The quantizer's params and state from a layer's variables (`<prefix>_<name>` entries)."""
  cut = len(prefix) + 1
  params = {k[cut:]: v for k, v in variables.get("params", {}).items()
            if k.startswith(prefix + "_")}
  state = {k[cut:]: v for k, v in variables.get("quant_state", {}).items()
           if k.startswith(prefix + "_")}
  return params, state


def layer_quantizer_vars(layer_vars: dict[str, Any], prefix: str) -> tuple[dict, dict]:
  """(params, state) of the quantizer named by `prefix` ('kernel', 'input', 'bias', 'output')."""
  return _split(layer_vars, prefix)


def _per_channel(scale, channels: int) -> np.ndarray:
  s = _np(scale).reshape(-1)
  return np.broadcast_to(s, (channels,)).astype(np.float64) if s.size in (1, channels) else None


def _esb_unit_scale(q) -> float:
  """Units of v in α: 2^-L (exponent field >= 2) or 1/2 (mid-rise, E = 1)."""
  return 0.5 if q.exponent_bits == 1 else 2.0 ** -q.mantissa_bits


def weight_codes(q: Quantizer, kernel: np.ndarray, params: dict, state: dict) -> WeightCodes:
  """The integer form of `kernel` under quantizer `q` (its trained params and state).

  Raises ValueError for a quantizer or setting that has no exact integer form.
  """
  family = _family(q)
  if family not in WEIGHT_FAMILIES:
    raise ValueError(f"weight quantizer {family!r} has no integer export; exportable: "
                     f"{', '.join(WEIGHT_FAMILIES)}")
  w = jnp.asarray(kernel, jnp.float32)
  channels = kernel.shape[-1]
  qw = _np(q.apply(w, params, state, "weight", False)[0])
  meta: dict[str, Any] = {}
  if family == "uniform":
    if q.scale_method == "lsq":
      scale = np.abs(_np(params["scale"])) + 1e-8
    else:
      lo, hi = q._range(w, q.granularity == "channel")  # noqa: SLF001  the step apply uses
      scale, _ = q._scale_and_zero(lo, hi)  # noqa: SLF001
    scale = _per_channel(scale, channels)
  elif family == "fixed_point":
    scale = _per_channel(2.0 ** -_np(state["fractional_bits"]), channels)
  elif family == "nuuq":
    scale = _per_channel(state["grid_step"], channels)
  elif family == "liss":
    delta, _ = q.integer_levels(params, state, w, "weight")
    scale = _per_channel(delta, channels)
  elif family == "esb":
    scale = _per_channel(_np(q.scale(w, params, state, "weight")) * _esb_unit_scale(q), channels)
  else:  # pot, log
    if q.base_root != 1:
      raise ValueError(f"{q.describe()}: log levels 2^(k/{q.base_root}) are not integer multiples "
                       "of one scale; integer export supports base_root=1 (power of two)")
    k = _np(q.full_scale_exponent(w, state, "weight"))
    scale = _per_channel(np.exp2(k - q.num_exponents + 1), channels)
  values = np.rint(qw / scale)
  err = np.max(np.abs(values * scale - qw)) if qw.size else 0.0
  if err > _REL_TOL * max(np.max(np.abs(qw)), 1e-30):
    raise ValueError(f"{q.describe()}: the kernel is not an integer multiple of its scale "
                     f"(error {err:.3g}); cannot export it exactly")
  values = values.astype(np.int64)
  return _weight_fields(q, family, values, scale, state, meta)


def _weight_fields(q, family, values, scale, state, meta) -> WeightCodes:
  if family in ("uniform", "fixed_point"):
    bits = int(q.bits) if family == "uniform" else int(np.max(_np(state["bits"])))
    bits = max(bits, int_bits(values))
    return WeightCodes(family, values, scale, {"codes": (values, bits, True)}, "int", bits, bits)
  if family in ("nuuq", "liss"):
    table = np.unique(values)
    n = q.num_levels
    index_bits = max(math.ceil(math.log2(n)), 1)
    index = np.searchsorted(table, values).astype(np.int64)
    table_bits = q.container_bits if family == "nuuq" else q.int_bits
    table_bits = max(table_bits, int_bits(table))
    meta["num_levels"] = n
    return WeightCodes(family, values, scale,
                       {"index": (index, index_bits, False), "table": (table, table_bits, True)},
                       "table_int", table_bits, index_bits, meta)
  if family == "esb":
    sign = (values < 0).astype(np.int64)
    mag = np.abs(values)
    if q.exponent_bits == 1:  # mid-rise: v = ±(2i + 1)
      index = (mag - 1) // 2
      m_bits = q.mantissa_bits + 1
      meta.update(mid_rise=True, mantissa_bits=m_bits)
      return WeightCodes(family, values, scale,
                         {"sign": (sign, 1, False), "mantissa": (index, m_bits, False)},
                         "int", m_bits + 2, q.bits, meta)
    L, E = q.mantissa_bits, q.exponent_bits
    exp_field, mant = esb_encode(mag, L)
    if np.any(exp_field >= 2**E):
      raise ValueError(f"{q.describe()}: a weight needs an exponent field beyond {E} bits")
    meta.update(mid_rise=False, mantissa_bits=L, exponent_bits=E)
    return WeightCodes(family, values, scale,
                       {"sign": (sign, 1, False), "exponent": (exp_field, E, False),
                        "mantissa": (mant, max(L, 1), False)},
                       "mantissa_shift", L + 1, q.bits, meta)
  # pot: v = ±(1 << (c - 1)), c = 0 for zero.
  mag = np.abs(values)
  if np.any(mag & (mag - 1)):
    raise ValueError(f"{q.describe()}: a weight is not a power of two times the scale")
  code = np.where(mag > 0, np.floor(np.log2(np.maximum(mag, 1))).astype(np.int64) + 1, 0)
  code_bits = q.bits - 1 if q.signed else q.bits
  meta.update(code_bits=code_bits)
  return WeightCodes(family, values, scale,
                     {"sign": ((values < 0).astype(np.int64), 1, False),
                      "exponent": (code, code_bits, False)},
                     "shift", code_bits, q.bits, meta)


def esb_encode(mag: np.ndarray, mantissa_bits: int) -> tuple[np.ndarray, np.ndarray]:
  """(exponent field, mantissa) of ESB magnitudes `v = q·2^L` (IEEE-like, with denormals)."""
  L = mantissa_bits
  mag = np.asarray(mag, np.int64)
  top = np.maximum(mag, 1)
  msb = np.floor(np.log2(top)).astype(np.int64)  # position of the leading one
  normal = mag >= 2**L
  exp_field = np.where(normal, msb - L + 1, 0)
  mant = np.where(normal, (mag >> np.maximum(msb - L, 0)) - 2**L, mag)
  return exp_field.astype(np.int64), mant.astype(np.int64)


def esb_decode(exp_field: np.ndarray, mant: np.ndarray, mantissa_bits: int) -> np.ndarray:
  """Magnitudes `v` from ESB fields: mant (f = 0) or (2^L + mant) << (f - 1)."""
  L = mantissa_bits
  exp_field = np.asarray(exp_field, np.int64)
  mant = np.asarray(mant, np.int64)
  return np.where(exp_field == 0, mant, (2**L + mant) << np.maximum(exp_field - 1, 0))


def act_codes(q: Quantizer, params: dict, state: dict) -> ActCodes:
  """The integer codes a layer-input (or layer-output) quantizer produces."""
  family = _family(q)
  if family not in ACT_FAMILIES:
    raise ValueError(f"activation quantizer {family!r} has no integer export; exportable: "
                     f"{', '.join(ACT_FAMILIES)}")
  if family == "uniform":
    if q.scale_method == "lsq":
      scale, zero = float(abs(_np(params["scale"])) + 1e-8), 0
    else:
      s, z = q._scale_and_zero(jnp.asarray(state["range_lo"]),  # noqa: SLF001
                               jnp.asarray(state["range_hi"]))
      scale, zero = float(s), int(round(float(z)))
    return ActCodes(family, "uniform", scale, q.bits, q.qmin, q.qmax, zero)
  if family == "fixed_point":
    bits = int(round(float(_np(state["bits"]))))
    qmax = 2 ** (bits - 1) - 1
    return ActCodes(family, "uniform", float(2.0 ** -float(_np(state["fractional_bits"]))), bits,
                    -qmax, qmax, 0)
  if family == "pact":
    return ActCodes(family, "uniform", float(_np(q.alpha(params))) / q.qmax, q.bits, 0, q.qmax, 0)
  if family == "liss":
    delta, n = q.integer_levels(params, state, None, "act")
    table = np.unique(np.asarray(n, np.int64))
    return ActCodes(family, "table", float(_np(delta)), q.bits, table=table)
  if family == "esb":
    alpha = float(_np(q.scale(None, params, state, "act")))
    unit = esb_lib.unit_levels(q.bits, q.significant_bits, q.signed)
    unit_scale = _esb_unit_scale(q)
    table = np.unique(np.rint(unit / unit_scale).astype(np.int64))
    if int_bits(table) > 31:
      raise ValueError(f"{q.describe()}: levels need {int_bits(table)}-bit integers (limit 31)")
    return ActCodes(family, "table", alpha * unit_scale, q.bits, table=table)
  if q.base_root != 1:
    raise ValueError(f"{q.describe()}: log levels 2^(k/{q.base_root}) are not integer multiples "
                     "of one scale; integer export supports base_root=1 (power of two)")
  k = float(_np(q.full_scale_exponent(None, state, "act")))
  w = q.num_exponents
  if w > 31:
    raise ValueError(f"{q.describe()}: {w} exponents need {w}-bit integers (limit 31)")
  positive = np.left_shift(np.int64(1), np.arange(w, dtype=np.int64))
  table = np.concatenate([-positive[::-1], [0], positive]) if q.signed else np.concatenate(
      [[0], positive])
  return ActCodes(family, "table", float(2.0 ** (k - w + 1)), q.bits, table=table.astype(np.int64))


def fake_quant_act(q: Quantizer, params: dict, state: dict, x: np.ndarray) -> np.ndarray:
  """The quantizer's own (fake-quant) output for an activation, for checks."""
  return np.asarray(q.apply(jnp.asarray(x, jnp.float32), params, state, "act", False)[0])
