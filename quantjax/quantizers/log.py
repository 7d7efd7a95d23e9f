"""Power-of-two ('pot') and logarithmic ('log') quantizers.

The logarithmic quantizer with a fine-grained step is MXQN's (Huang, Liu, Fang, "MXQN: Mixed
quantization for reducing bit-width of weights and activations in deep convolutional neural
networks", Applied Intelligence 51(7):4561-4574, 2021; METHODS.md §2); the power-of-two baseline
is its base-2 case (METHODS.md, baselines).

Levels: `0` or `±2^(k/m)`, `m` the `base_root` (1: base 2, PoT; 2: base √2, MXQN's default
"fine-grained" step; 4: base 2^(1/4)), `k` an integer in a window of `W` exponents ending at the
full-scale exponent `K`: `k = K-W+1, ..., K`.

Code layout (b bits): a sign bit when `signed`, then a magnitude field of `b' = b-1` bits (signed)
or `b' = b` bits (unsigned, post-ReLU: no sign bit). Magnitude code 0 is the value zero; codes
`c = 1..2^b'-1` are `2^((K - W + c)/m)`, so `W = 2^b' - 1` exponents (PoT signed: `2^(b-1) - 1`, as
METHODS.md's baseline says). Signed: `2^b - 1` distinct values (±0 share a value); unsigned: `2^b`.
Unsigned inputs below zero go to 0.

Rounding is to the nearest level in the linear domain (the error-minimising choice; rounding the
exponent in the log domain would put the threshold between 2^k and 2^(k+1) at their geometric
mean instead of their midpoint). So a value below the smallest level `s` goes to 0 when it is
below `s/2` and to `s` above it, and values beyond `2^(K/m)` clip to it. Ties go to the even
magnitude code (round half to even on the code; the tie at `s/2` goes to 0).

Full-scale exponent `K` (per tensor, or per output channel for weights):
- 'max': `K = ceil(m·log2 max|x|)`, the smallest level not below the max (no clipping; the max is
  allowed to exceed `2^(K/m)` by a relative 1e-4·ln2/m, so a max that is itself a level keeps it).
- 'sqnr': the `K` maximising `SQNR = 10·log10(Σx² / Σ(x - Q(x))²)` among `sqnr_candidates`
  exponents from the 'max' one downwards (a larger K only loses the smallest level). Ties keep the
  larger K.
Weights compute `K` on every call. Activations keep a moving average of the batch's full-scale
value in 'quant_state' (`max|x|` for 'max', `2^(K*/m)` of the batch's SQNR-best `K*` for 'sqnr',
updated in training only) and take `K = ceil(m·log2)` of it ('max') or the nearest exponent
`round(m·log2)` ('sqnr'). The activations' SQNR search runs on an evenly strided subsample of
`sqnr_sample` values of the batch (its first candidate still from the whole batch's max): the
search is a statistic smoothed by the moving average, and this keeps its cost flat in batch size.

Nearest-level rounding needs no logarithm: a value's floor exponent is read off its float32 bits
(binary exponent, and its mantissa compared with the m level mantissas of an octave), and levels
are built from bits too (`power_of_root`), so fake quantization costs a few integer operations per
element.

Wide windows reach below float32's normal range (PoT with b=8 unsigned spans 2^-254 of full
scale): levels below 2^-126 flush to zero, which changes nothing for activations and weights.

Gradient: straight-through ('ste') or clipped straight-through ('clipped_ste': zero beyond the
full-scale level, and for unsigned below zero); `K` is a statistic and gets no gradient.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from quantjax.quantizers import codes as codes_lib
from quantjax.quantizers import estimators, floatbits
from quantjax.quantizers.base import (
  Array,
  Multiplier,
  Quantizer,
  Vars,
  channel_reduce_axes,
  check_bits,
  check_choice,
  check_momentum,
  ema,
)
from quantjax.quantizers.codes import ActCodes, WeightCodes
from quantjax.quantizers.registry import register

MAX_LOG_BITS = 8
BASE_ROOTS = (1, 2, 4)
FULL_SCALE_METHODS = ("max", "sqnr")
GRANULARITIES = ("tensor", "channel")
_EXPONENT_TOL = 1e-4  # in units of 1/m: a max within this of a level's exponent maps to that level


class _LogGrid(NamedTuple):
  """Static description of the level window, the non-differentiable argument of the VJP."""

  base_root: int  # m
  num_exponents: int  # W
  signed: bool
  estimator: str


def num_exponents(bits: int, signed: bool) -> int:
  """W = 2^b' - 1 exponents: b' = b - 1 magnitude bits signed, b unsigned; one code is zero."""
  return 2 ** (bits - 1 if signed else bits) - 1


def _roots(base_root: int) -> list[float]:
  """`2^(j/m)` for j = 0..m-1, rounded to float32 (the mantissas of one octave of levels)."""
  return [float(np.float32(2.0 ** (j / base_root))) for j in range(base_root)]


def _octave_and_remainder(k: Array, base_root: int) -> tuple[Array, Array]:
  """`k = m·octave + remainder`, `0 <= remainder < m`, for int32 k (m a power of two)."""
  shift = base_root.bit_length() - 1
  return jnp.right_shift(k, shift), jnp.bitwise_and(k, base_root - 1)


def power_of_root(k: Array, base_root: int, dtype=jnp.float32) -> Array:
  """`2^(k/m)` for integer-valued k: exact powers of two, correctly rounded roots.

  XLA's exp2 is not exact at integers (exp2(-13) is off by 1e-6 relative on CPU), so the octave
  is an exact power of two built from its float32 bits and the fractional part is one of m
  float32-rounded constants. Levels below 2^-126 (float32's smallest normal) are 0.
  """
  octave, remainder = _octave_and_remainder(jnp.asarray(k).astype(jnp.int32), base_root)
  roots = _roots(base_root)
  mantissa = jnp.full(remainder.shape, roots[0], jnp.float32)
  for j in range(1, base_root):  # m <= 4 constants: selects, cheaper than a gather
    mantissa = jnp.where(remainder == j, roots[j], mantissa)
  return (mantissa * floatbits.power_of_two(octave)).astype(dtype)


def exponent_levels(full_scale_exp: Array, grid: _LogGrid) -> Array:
  """The W positive levels `2^(k/m)`, ascending, shape K.shape + [W]."""
  k = jnp.asarray(full_scale_exp)[..., None] + jnp.arange(1 - grid.num_exponents, 1)
  return power_of_root(k, grid.base_root)


def floor_exponent(a: Array, base_root: int) -> Array:
  """The largest k with `2^(k/m) <= a` (levels as `power_of_root` rounds them), for float32 a > 0.

  Read off a's float32 bits, with no logarithm: the octave is a's binary exponent and the
  remainder counts the level mantissas of that octave not above a's mantissa, so the comparison
  is exact. Zero and subnormal a give an exponent below every normal level.
  """
  octave, mantissa = floatbits.split(a)
  k = base_root * octave
  for root in _roots(base_root)[1:]:
    k = k + (mantissa >= floatbits.mantissa_of(root)).astype(jnp.int32)
  return k


def quantize_magnitude(a: Array, full_scale_exp: Array, grid: _LogGrid,
                       k_floor: Array | None = None) -> Array:
  """Nearest of {0} ∪ {2^(k/m)} to `a >= 0` in the linear domain (no gradient rules).

  `k_floor` is `floor_exponent(a)`, passed in when several windows quantize the same `a`.
  """
  top = jnp.asarray(full_scale_exp).astype(jnp.int32)
  bottom = top - grid.num_exponents + 1  # smallest exponent; bottom - 1 stands for zero
  if grid.base_root == 1 and a.dtype == jnp.float32:
    return _quantize_magnitude_pot(a, top, bottom)
  return _quantize_magnitude_general(a, top, bottom, grid.base_root, k_floor)


def _quantize_magnitude_general(a: Array, top: Array, bottom: Array, m: int,
                                k_floor: Array | None) -> Array:
  """`quantize_magnitude` for any base root: the two neighbouring levels, then the nearer."""
  if k_floor is None:
    k_floor = floor_exponent(a, m)
  k_lo = jnp.clip(k_floor, bottom - 1, top)
  k_hi = jnp.minimum(k_lo + 1, top)
  lo = jnp.where(k_lo < bottom, 0.0, power_of_root(k_lo, m, a.dtype)).astype(a.dtype)
  hi = power_of_root(k_hi, m, a.dtype)
  d_lo, d_hi = jnp.abs(a - lo), jnp.abs(hi - a)
  even_code = jnp.bitwise_and(k_hi - bottom + 1, 1) == 0
  return jnp.where((d_hi < d_lo) | ((d_hi == d_lo) & even_code), hi, lo)


def _quantize_magnitude_pot(a: Array, top: Array, bottom: Array) -> Array:
  """`quantize_magnitude` for powers of two (m = 1) and float32 `a >= 0`, on a's bits.

  The same values as the general path for every `a >= 2^-125` (below it the general path's
  differences are subnormal, which XLA's CPU flushes to zero), with a third of its operations.
  Inside the window (bottom <= e < top, e = a's binary exponent) the neighbours are 2^e and
  2^(e+1), both differences to `a` are exact (Sterbenz), so the nearer one is 2^(e+1) exactly when
  a's mantissa passes 1.5 (its bits pass 2^22), and on the tie the even code (`e - bottom` even);
  a subnormal `a` (e = -127) takes the same test against 2^-126 and 0. Below the window: the
  smallest level `s` if `a > s/2`, else 0 (the tie goes to the even code, 0). From the top level
  on: the top.
  """
  bits = jax.lax.bitcast_convert_type(a, jnp.int32)
  e = jnp.right_shift(bits, floatbits.MANTISSA_BITS) - floatbits.EXPONENT_BIAS
  mant = jnp.bitwise_and(bits, floatbits.MANTISSA_MASK)
  half = 1 << (floatbits.MANTISSA_BITS - 1)
  up = (mant > half) | ((mant == half) & (jnp.bitwise_and(e - bottom, 1) == 0))
  up = up & (e < floatbits.EXPONENT_BIAS)  # 2^128 is not a level: the general path keeps 2^127
  inside = jax.lax.bitcast_convert_type(
      jnp.left_shift(e + up.astype(jnp.int32) + floatbits.EXPONENT_BIAS, floatbits.MANTISSA_BITS),
      jnp.float32)
  smallest = floatbits.power_of_two(bottom)
  below = jnp.where(a > smallest * 0.5, smallest, 0.0)
  return jnp.where(e >= top, floatbits.power_of_two(top), jnp.where(e < bottom, below, inside))


def log_quantize_raw(x: Array, full_scale_exp: Array, grid: _LogGrid) -> Array:
  """Signed or unsigned log quantization of `x` (no gradient rules)."""
  if grid.signed:
    return jnp.sign(x) * quantize_magnitude(jnp.abs(x), full_scale_exp, grid)
  return quantize_magnitude(jnp.maximum(x, 0.0), full_scale_exp, grid)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def log_quantize(x: Array, full_scale_exp: Array, grid: _LogGrid) -> Array:
  """`0` or `±2^(k/m)` nearest to x, k in the window ending at K; straight-through gradients."""
  return log_quantize_raw(x, full_scale_exp, grid)


def _log_quantize_fwd(x, full_scale_exp, grid):
  return log_quantize_raw(x, full_scale_exp, grid), (x, full_scale_exp)


def _log_quantize_bwd(grid, residuals, g):
  x, full_scale_exp = residuals
  top = power_of_root(full_scale_exp, grid.base_root, x.dtype)
  inside = (jnp.abs(x) <= top) if grid.signed else ((x >= 0) & (x <= top))
  return estimators.input_grad(g, inside, grid.estimator), jnp.zeros_like(full_scale_exp)


log_quantize.defvjp(_log_quantize_fwd, _log_quantize_bwd)


def max_exponent(max_abs: Array, base_root: int) -> Array:
  """`ceil(m·log2 max)`: the exponent of the smallest level `2^(K/m)` not below `max`."""
  tiny = jnp.finfo(jnp.float32).tiny
  return jnp.ceil(base_root * jnp.log2(jnp.maximum(max_abs, tiny)) - _EXPONENT_TOL)


def sqnr_exponent(x: Array, axes, grid: _LogGrid, candidates: int,
                  max_abs: Array | None = None) -> Array:
  """The full-scale exponent maximising SQNR among `candidates` from the max's one downwards.

  Only the magnitudes matter (an unsigned quantizer's negative inputs cost the same x² for every
  candidate), and their floor exponents are computed once for all candidates. `max_abs` (default:
  `x`'s) fixes the first candidate when `x` is a subsample of the tensor.
  """
  a = jnp.abs(x) if grid.signed else jnp.maximum(x, 0.0)
  if max_abs is None:
    max_abs = jnp.max(jnp.abs(x), axis=axes)
  k_max = max_exponent(max_abs, grid.base_root)  # [] or [C], broadcasting against a's last axis
  k_floor = floor_exponent(a, grid.base_root)
  # All candidates in one broadcast, [candidates, *a.shape]: one fused pass and reduction
  # instead of one per candidate (a training step runs this for every quantized tensor).
  j = jnp.arange(candidates, dtype=k_max.dtype).reshape((candidates,) + (1,) * a.ndim)
  q = quantize_magnitude(a, k_max - j, grid, k_floor)
  sum_axes = tuple(range(1, a.ndim + 1)) if axes is None else tuple(ax + 1 for ax in axes)
  errors = jnp.sum(jnp.square(a - q), axis=sum_axes)  # [candidates] or [candidates, C]
  return k_max - jnp.argmin(errors, axis=0).astype(k_max.dtype)  # first (largest K) on ties


def strided_sample(x: Array, size: int) -> Array:
  """At most about `size` values of `x`, evenly strided over the flattened tensor (0: all)."""
  flat = jnp.ravel(x)
  stride = max(1, flat.shape[0] // size) if size > 0 else 1
  return flat[::stride]


@register("log")
@dataclasses.dataclass(frozen=True, kw_only=True)
class Log(Quantizer):
  """Logarithmic quantizer, levels 0 and ±2^(k/m) (MXQN's fine-grained log, Huang et al. 2021)."""

  bits: int = 4  # b, width of the code (sign bit included when signed), 2 to 8
  base_root: int = 2  # m: levels 2^(k/m); 1 = power of two, 2 = base √2 (MXQN's default), 4
  signed: bool = True  # False for post-ReLU inputs: no sign bit, the magnitude gets all b bits
  granularity: str = "tensor"  # 'tensor' or 'channel' (weights only: the output-channel axis)
  full_scale: str = "max"  # full-scale exponent: 'max' (no clipping) or 'sqnr' (best SQNR)
  sqnr_candidates: int = 4  # 'sqnr': exponents tried, from the 'max' one downwards
  sqnr_sample: int = 16384  # 'sqnr' activations: search on a strided subsample this big (0: all)
  estimator: str = "clipped_ste"  # 'ste' or 'clipped_ste' for dQ/dx
  momentum: float = 0.9  # moving average of the activations' full-scale value

  def __post_init__(self):
    name = type(self).__name__
    check_bits(name, "bits", self.bits, hi=MAX_LOG_BITS)
    check_choice(name, "base_root", self.base_root, BASE_ROOTS)
    check_choice(name, "signed", self.signed, (True, False))
    check_choice(name, "granularity", self.granularity, GRANULARITIES)
    check_choice(name, "full_scale", self.full_scale, FULL_SCALE_METHODS)
    check_choice(name, "estimator", self.estimator, estimators.ESTIMATORS)
    if not isinstance(self.sqnr_candidates, int) or self.sqnr_candidates < 1:
      raise ValueError(
          f"{name}.sqnr_candidates={self.sqnr_candidates!r} is out of range; valid: integers >= 1")
    if not isinstance(self.sqnr_sample, int) or self.sqnr_sample < 0:
      raise ValueError(
          f"{name}.sqnr_sample={self.sqnr_sample!r} is out of range; valid: integers >= 0")
    check_momentum(name, self.momentum)

  @property
  def num_exponents(self) -> int:
    """W, the number of nonzero magnitudes."""
    return num_exponents(self.bits, self.signed)

  @property
  def num_levels(self) -> int:
    """Distinct values: 2W + 1 signed (= 2^b - 1), W + 1 unsigned (= 2^b)."""
    return 2 * self.num_exponents + 1 if self.signed else self.num_exponents + 1

  @property
  def multiplier(self) -> Multiplier:
    """A shift: the b-bit code (sign, then the exponent index) drives a barrel shifter.

    The charged width is the whole code, sign included: the magnitude bits set the shift (one mux
    stage of the other operand each) and the sign a conditional negation (one more stage), so a
    b-bit code costs b stages across the other operand. With `base_root` m > 1 the low log2 m bits
    of the exponent pick one of m accumulators, each scaled once per output by its constant
    2^(j/m) (not per MAC), so the MAC is still a shift.
    """
    return Multiplier("shift", self.bits, shift_bits=self.bits - 1 if self.signed else self.bits)

  def describe(self) -> str:
    sign = "" if self.signed else "u"
    base = "" if self.registry_name == "pot" else f"/m{self.base_root}"
    return f"{self.registry_name}{sign}{self.bits}{base}/{self.granularity}/{self.full_scale}"

  def _grid(self) -> _LogGrid:
    return _LogGrid(self.base_root, self.num_exponents, self.signed, self.estimator)

  # -- the full-scale exponent ---------------------------------------------------------------

  def batch_full_scale(self, x: Array, axes) -> Array:
    """The full-scale value of `x`: max|x| ('max') or 2^(K*/m) of the SQNR-best K* ('sqnr')."""
    x = jax.lax.stop_gradient(x).astype(jnp.float32)
    if self.full_scale == "max":
      return jnp.max(jnp.abs(x), axis=axes)
    max_abs = jnp.max(jnp.abs(x), axis=axes)
    if axes is None:  # a per-tensor statistic (activations): a subsample is enough
      x = strided_sample(x, self.sqnr_sample)
    k = sqnr_exponent(x, axes, self._grid(), self.sqnr_candidates, max_abs)
    return power_of_root(k, self.base_root)

  def exponent_from_full_scale(self, full_scale: Array) -> Array:
    """K from a (moving-average) full-scale value: ceil ('max', no clipping) or nearest ('sqnr')."""
    if self.full_scale == "max":
      return max_exponent(full_scale, self.base_root)
    tiny = jnp.finfo(jnp.float32).tiny
    return jnp.round(self.base_root * jnp.log2(jnp.maximum(full_scale, tiny)))

  def full_scale_exponent(self, x: Array | None, state: Vars, role: str) -> Array:
    """K as `apply` uses it (without the training-time moving-average update)."""
    if role == "act":
      return self.exponent_from_full_scale(state["full_scale"])
    if x is None:
      raise ValueError(f"{type(self).__name__} weight levels depend on the weights: pass x")
    x = jax.lax.stop_gradient(x).astype(jnp.float32)
    axes = channel_reduce_axes(x, self.granularity == "channel")
    if self.full_scale == "max":
      return max_exponent(jnp.max(jnp.abs(x), axis=axes), self.base_root)
    return sqnr_exponent(x, axes, self._grid(), self.sqnr_candidates)

  # -- the contract --------------------------------------------------------------------------

  def init(self, x: Array, role: str) -> tuple[Vars, Vars]:
    self.validate_role(role)
    if role == "act":
      return {}, {"full_scale": self.batch_full_scale(x, None)}
    return {}, {}

  def apply(
      self, x: Array, params: Vars, state: Vars, role: str, training: bool
  ) -> tuple[Array, Vars]:
    del params
    if role == "act" and training:
      batch = self.batch_full_scale(x, None)
      state = {"full_scale": ema(state["full_scale"], batch, self.momentum)}
    k = self.full_scale_exponent(x, state, role)
    return log_quantize(x, jax.lax.stop_gradient(k).astype(x.dtype), self._grid()), state

  def levels(self, params: Vars, state: Vars, x: Array | None = None,
             role: str = "weight") -> Array:
    """All representable values, ascending, shape K.shape + [num_levels] (weights need `x`)."""
    del params
    k = self.full_scale_exponent(x, state, role)
    positive = exponent_levels(k, self._grid()).astype(jnp.float32)
    zero = jnp.zeros((*positive.shape[:-1], 1), jnp.float32)
    if not self.signed:
      return jnp.concatenate([zero, positive], axis=-1)
    return jnp.concatenate([-positive[..., ::-1], zero, positive], axis=-1)

  # -- integer export ------------------------------------------------------------------------

  def _check_exportable(self) -> None:
    if self.base_root != 1:
      raise ValueError(f"{self.describe()}: log levels 2^(k/{self.base_root}) are not integer "
                       "multiples of one scale; integer export supports base_root=1 (power of two)")

  def weight_codes(self, kernel, params: Vars, state: Vars) -> WeightCodes:
    """The 'shift' layout: `v = ±(1 << (c-1))`, c the magnitude code (0 = zero), scale 2^(K-W+1)."""
    self._check_exportable()
    w = jnp.asarray(kernel, jnp.float32)
    k = np.asarray(self.full_scale_exponent(w, state, "weight"), np.float64)
    scale = codes_lib.per_channel(np.exp2(k - self.num_exponents + 1), w.shape[-1])
    out = self.fake_quant(w, params, state, "weight")
    values = codes_lib.integer_values(self.describe(), out, scale)
    mag = np.abs(values)
    if np.any(mag & (mag - 1)):
      raise ValueError(f"{self.describe()}: a weight is not a power of two times the scale")
    code = np.where(mag > 0, np.floor(np.log2(np.maximum(mag, 1))).astype(np.int64) + 1, 0)
    code_bits = self.bits - 1 if self.signed else self.bits
    return WeightCodes(self.registry_name, values, scale,
                       {"sign": ((values < 0).astype(np.int64), 1, False),
                        "exponent": (code, code_bits, False)},
                       "shift", code_bits, self.bits, {"code_bits": code_bits})

  def act_codes(self, params: Vars, state: Vars) -> ActCodes:
    """A table of 0 and ±2^j, j = 0..W-1, at scale 2^(K-W+1)."""
    del params
    self._check_exportable()
    k = float(np.asarray(self.full_scale_exponent(None, state, "act"), np.float64))
    w = self.num_exponents
    if w > 31:
      raise ValueError(f"{self.describe()}: {w} exponents need {w}-bit integers (limit 31)")
    positive = np.left_shift(np.int64(1), np.arange(w, dtype=np.int64))
    table = np.concatenate([-positive[::-1], [0], positive]) if self.signed else np.concatenate(
        [[0], positive])
    return ActCodes(self.registry_name, "table", float(2.0 ** (k - w + 1)), self.bits,
                    table=table.astype(np.int64))


@register("pot")
@dataclasses.dataclass(frozen=True, kw_only=True)
class PowerOfTwo(Log):
  """Power-of-two quantizer, levels {0} ∪ ±2^e: the base-2 case of `Log` (METHODS.md baseline)."""

  base_root: int = 1  # fixed at 1 (base 2); use 'log' for base √2 or 2^(1/4)

  def __post_init__(self):
    super().__post_init__()
    check_choice(type(self).__name__, "base_root", self.base_root, (1,))
