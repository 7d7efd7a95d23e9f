"""The integer form of a quantized tensor: what integer export stores and the emulator decodes.

Every exportable quantizer represents a value as `scale · v`, `v` an integer (per tensor, or per
output channel for weights). A quantizer says how through its contract (`Quantizer.weight_codes`,
`Quantizer.act_codes` in `quantizers/base.py`); export, the emulator and reports read only these
objects, never the quantizer's name.

A kernel (`WeightCodes`) is stored as integer fields in one of five layouts, named by the fields
stored. Each has one decode rule, `WeightCodes.decode`, from the fields back to the integers `v`
the multiplier sees (`sign` 1 means negative):

- 'codes'  {codes}:                   `v = codes` (uniform, fixed point);
- 'table'  {index, table}:            `v = table[index]`, `table` the layer's integer levels,
  ascending (NUUQ, Liss);
- 'odd'    {sign, mantissa}:          `v = ±(2·mantissa + 1)` (ESB's mid-rise form, E = 1);
- 'float'  {sign, exponent, mantissa}: `|v| = mantissa` if `exponent = 0`, else
  `(2^L + mantissa) << (exponent - 1)`, `L = meta['mantissa_bits']` (IEEE-like with denormals;
  ESB);
- 'shift'  {sign, exponent}:          `|v| = 0` if `exponent = 0`, else `1 << (exponent - 1)`
  (power of two).

A new quantizer picks one of these layouts; a new layout is a new on-disk format (the emulator,
the NumPy reference of the tests and the format version all follow it), so it is added here.

An activation quantizer's codes (`ActCodes`) are 'uniform' (`value = code - zero_point`, reached by
a dyadic requantization) or a 'table' of ascending distinct integers (reached by rounding the
same dyadic rescale to the nearest of them: `quantjax.export.rescale.level_thresholds`).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np

WEIGHT_LAYOUTS = {
  "codes": ("codes",),
  "table": ("index", "table"),
  "odd": ("mantissa", "sign"),
  "float": ("exponent", "mantissa", "sign"),
  "shift": ("exponent", "sign"),
}
ACT_KINDS = ("uniform", "table")
REL_TOL = 1e-5  # |scale·v - Q(x)| allowed, relative to max|Q(x)| (float32 arithmetic in Q)


def int_bits(values: np.ndarray) -> int:
  """Bits of the narrowest integer type holding `values` (signed if any is negative)."""
  lo, hi = int(np.min(values)), int(np.max(values))
  if lo >= 0:
    return max(hi.bit_length(), 1)
  return max(hi.bit_length(), (-lo - 1).bit_length()) + 1


def signed_bits(values: np.ndarray) -> int:
  """Bits of the narrowest two's-complement integer holding `values` (non-negative ones too)."""
  lo, hi = int(np.min(values)), int(np.max(values))
  return max(hi.bit_length(), (-lo - 1).bit_length() if lo < 0 else 0) + 1


def layout_of(field_names) -> str:
  """The layout ('codes', 'table', 'odd', 'float', 'shift') that the stored fields name."""
  names = tuple(sorted(field_names))
  for layout, fields in WEIGHT_LAYOUTS.items():
    if names == fields:
      return layout
  valid = "; ".join(f"{k}: {', '.join(v)}" for k, v in WEIGHT_LAYOUTS.items())
  raise ValueError(
    f"weight fields {', '.join(names) or '(none)'} match no layout; valid layouts: {valid}"
  )


def encode_float(mag: np.ndarray, mantissa_bits: int) -> tuple[np.ndarray, np.ndarray]:
  """(exponent field, mantissa) of non-negative integers in the 'float' layout (with denormals)."""
  L = mantissa_bits
  mag = np.asarray(mag, np.int64)
  msb = np.floor(np.log2(np.maximum(mag, 1))).astype(np.int64)  # position of the leading one
  normal = mag >= 2**L
  exp_field = np.where(normal, msb - L + 1, 0)
  mant = np.where(normal, (mag >> np.maximum(msb - L, 0)) - 2**L, mag)
  return exp_field.astype(np.int64), mant.astype(np.int64)


def decode_float(exp_field, mant, mantissa_bits: int, xp=np):
  """Magnitudes of the 'float' layout: `mant` (exponent 0) or `(2^L + mant) << (exponent - 1)`."""
  one = xp.ones_like(exp_field)
  shift = xp.maximum(exp_field - 1, 0)
  return xp.where(exp_field == 0, mant, xp.left_shift((2**mantissa_bits) * one + mant, shift))


@dataclasses.dataclass
class WeightCodes:
  """A layer's kernel as integers: `kernel ≈ scale[c] · values[..., c]` (c = output channel).

  `family`, `multiplier`, `multiplier_bits`, `stored_bits`, the field names and `meta` are written
  to the graph's node as they are (docs/FORMAT.md); `fields` become its tensors.
  """

  family: str  # the quantizer's registry name (a label for reports; nothing dispatches on it)
  values: np.ndarray  # int64, the kernel's shape: the integers the multiplier sees
  scale: np.ndarray  # float64 [C_out]
  fields: dict[str, tuple[np.ndarray, int, bool]]  # stored fields: name -> (ints, bits, signed)
  multiplier: str  # 'int' | 'table_int' | 'mantissa_shift' | 'shift' (the graph's label)
  multiplier_bits: int  # operand width of the multiplier (significand bits for mantissa_shift)
  stored_bits: float  # bits per weight on disk (fields together, tables excluded)
  meta: dict[str, Any] = dataclasses.field(default_factory=dict)  # decoding constants (JSON)

  def __post_init__(self):
    decoded = self.decode({k: v[0] for k, v in self.fields.items()}, self.meta)
    if not np.array_equal(np.reshape(decoded, np.shape(self.values)), self.values):
      raise ValueError(
        f"{self.family}: the stored {self.layout!r} fields do not decode to the kernel's integers"
      )

  @property
  def layout(self) -> str:
    return layout_of(self.fields)

  @staticmethod
  def decode(fields: dict[str, Any], meta: dict[str, Any], xp=np):
    """The integers `v` from stored fields (name -> integer array), by the layout they form.

    Works on NumPy (`xp=np`) or jax.numpy (`xp=jnp`, jittable) int arrays of any shape; `table`
    is 1-D and `index` takes the kernel's shape.
    """
    layout = layout_of(fields)
    if layout == "codes":
      return fields["codes"]
    if layout == "table":
      return xp.take(fields["table"], fields["index"], axis=0)
    if layout == "odd":
      mag = 2 * fields["mantissa"] + 1
    elif layout == "float":
      mag = decode_float(fields["exponent"], fields["mantissa"], meta["mantissa_bits"], xp)
    else:  # shift
      code = fields["exponent"]
      mag = xp.where(code > 0, xp.left_shift(xp.ones_like(code), xp.maximum(code - 1, 0)), 0)
    return xp.where(fields["sign"] == 1, -mag, mag)


@dataclasses.dataclass
class ActCodes:
  """An activation quantizer's codes: real value `scale · value(code)`."""

  family: str  # the quantizer's registry name (a label)
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


def per_channel(scale, channels: int) -> np.ndarray:
  """A per-tensor or per-output-channel scale as float64 [channels]."""
  s = np.asarray(scale, np.float64).reshape(-1)
  if s.size not in (1, channels):
    raise ValueError(f"a scale of {s.size} entries fits neither a tensor nor {channels} channels")
  return np.broadcast_to(s, (channels,)).astype(np.float64)


def integer_values(owner: str, quantized: np.ndarray, scale: np.ndarray) -> np.ndarray:
  """`rint(quantized / scale)` as int64, checked to reproduce `quantized` (one-line error if not).

  Args:
    owner: the quantizer's describe(), for the error.
    quantized: the fake-quantized kernel [..., C].
    scale: float64 [C].
  """
  qw = np.asarray(quantized, np.float64)
  values = np.rint(qw / scale)
  err = np.max(np.abs(values * scale - qw)) if qw.size else 0.0
  if err > REL_TOL * max(np.max(np.abs(qw)) if qw.size else 0.0, 1e-30):
    raise ValueError(
      f"{owner}: the kernel is not an integer multiple of its scale "
      f"(error {err:.3g}); cannot export it exactly"
    )
  return values.astype(np.int64)


def plain_codes(family: str, values: np.ndarray, scale: np.ndarray, bits: int) -> WeightCodes:
  """The 'codes' layout: each integer stored as a signed code of at least `bits` bits."""
  bits = max(int(bits), signed_bits(values))
  return WeightCodes(family, values, scale, {"codes": (values, bits, True)}, "int", bits, bits)


def table_codes(
  family: str, values: np.ndarray, scale: np.ndarray, num_levels: int, table_bits: int
) -> WeightCodes:
  """The 'table' layout: an index per weight into the distinct integers, `num_levels` possible."""
  table = np.unique(values)
  index_bits = max(math.ceil(math.log2(num_levels)), 1)
  index = np.searchsorted(table, values).astype(np.int64)
  table_bits = max(int(table_bits), signed_bits(table))
  return WeightCodes(
    family,
    values,
    scale,
    {"index": (index, index_bits, False), "table": (table, table_bits, True)},
    "table_int",
    table_bits,
    index_bits,
    {"num_levels": int(num_levels)},
  )
