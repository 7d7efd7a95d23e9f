"""Elastic Significant Bits (ESB) with the distribution difference aligner (DDA).

Gong, Lu, Xie, Jin, Li, Wang, "Elastic Significant Bit Quantization and Acceleration for Deep
Neural Networks", IEEE TPDS 33(11):3178-3193, 2022 (arXiv:2109.03513). METHODS.md §5.

The format (on `u = x/α`, in units of α): `b` total bits, a sign and `k` significant bits
(`1 <= k <= b-1`); `L = k - 1` mantissa bits and `E = b - 1 - L` exponent bits.

- `E = 1` (`k = b-1`): uniform mid-rise, levels `±(i + 1/2)`, `i = 0..2^(b-1)-1`: `2^b` levels, no
  zero. A value goes to the nearest level; a tie (|u| an integer) goes to the even magnitude index
  `i` (round half to even on `|u| - 1/2`), and `u = 0` goes to `+1/2`.
- `E >= 2`: `N = 2^E - 2`, `e = clip(floor(log2|u|), 0, N)`, `q = 2^(e-L)·round(u / 2^(e-L))`
  (half to even), clipped to `±(2^(N+1) - 2^(N-L))`: zero, a uniform sub-range `j·2^-L` below 2,
  then `2^L` values per octave, `2^b - 1` levels in all. This is the nearest level (ties aside).
  `k = 1` is power-of-two ({0, ±1, ±2, ±4} for b=3) and `k = b-1` is the uniform case above.

Unsigned form (`signed=False`, post-ReLU activations): no sign bit, so the magnitude gets all `b`
bits: `L = k - 1` and `E = b - k + 1` exponent bits, i.e. exactly the non-negative half of the
signed `(b+1)`-bit format with the same `k`. Since `k <= b-1`, `E >= 2`: the unsigned form always
has the level 0 and `2^b` levels (0 and `2^b - 1` positive ones). Negative inputs go to 0.

Wide exponent fields (e.g. `b=8, k=1`: N = 126) have levels beyond float32's range; they are
unreachable for float32 inputs and dropped from `levels()`.

The scale α (per tensor, or per output channel for weights), selected by `alpha`:
- 'lambda_std' (DDA form (a)): `α = λ(b, k)·σ̂`, `λ` from the checked-in table
  `esb_lambda_table.json` (the α/σ minimising the MSE between a standard Gaussian and its ESB
  quantization; regenerate with `python -m quantjax.quantizers.esb_lambda`). `σ̂` is `std(x)` for
  the signed form; for the unsigned form it is the RMS of the positive values (the scale of a
  half-normal), with `λ` computed for the half-normal. Activations track `σ̂` with a moving average
  in 'quant_state' (updated in training only); weights compute it on every call.
- 'learned' (DDA form (b)): α is a parameter initialised by form (a). Its gradient from the task
  loss is LSQ's (Esser et al. 2020): `dQ/dα = q(u) - u` inside the range, the clip level `q(u)`
  outside it, scaled by `1/sqrt(N·Qp)` (N values per α, Qp the number of positive levels).

`aux_loss` is DDA's distribution difference `D(x, α·q(x/α))` (`dda_loss`): 'mse' normalised by
`var(x)` (default), 'l1' normalised by `mean|x|`, 'kl' between Gaussian-kernel soft histograms of
`x` and of its quantization over `kl_bins` bins spanning both. The code assignment `q(x/α)` is held
fixed, so the loss's gradient is the exact one for a fixed assignment: on α, `-2(x - αq)·q`
(for 'mse'), which moves α to the least-squares scale; on x, `2(x - αq)`, which pulls the weights
toward their levels. Normalisers are constants (stop-gradient). For weights the loss is always
returned; for activations only when α is learned (and then x is held fixed: only α learns from it).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from quantjax.quantizers import codes as codes_lib
from quantjax.quantizers import estimators, floatbits
from quantjax.quantizers.base import (
  Array,
  IntegerGrid,
  Multiplier,
  Quantizer,
  Vars,
  channel_reduce_axes,
  check_bits,
  check_choice,
  check_momentum,
  ema,
  reduce_to,
)
from quantjax.quantizers.codes import ActCodes, WeightCodes
from quantjax.quantizers.registry import register

MAX_ESB_BITS = 8
ALPHA_METHODS = ("lambda_std", "learned")
DDA_LOSSES = ("mse", "l1", "kl", "none")
GRANULARITIES = ("tensor", "channel")
LAMBDA_TABLE_PATH = os.path.join(os.path.dirname(__file__), "esb_lambda_table.json")
_FLOAT32_MAX = float(np.finfo(np.float32).max)  # levels beyond it (in units of α) are unreachable


class _Format(NamedTuple):
  """Static description of the ESB format, the non-differentiable argument of the VJP."""

  mantissa_bits: int  # L = k - 1
  exponent_bits: int  # E (the unsigned form counts the freed sign bit here)
  signed: bool
  estimator: str
  learn_alpha: bool
  num_positive: int  # positive levels, LSQ's Qp in the α gradient's scale


def format_bits(bits: int, significant_bits: int, signed: bool) -> tuple[int, int]:
  """(L, E): mantissa and exponent bits of a b-bit value with k significant bits."""
  mantissa = significant_bits - 1
  exponent = bits - 1 - mantissa if signed else bits - mantissa
  return mantissa, exponent


def max_level(mantissa_bits: int, exponent_bits: int) -> float:
  """The largest level in units of α: `2^(b-1) - 1/2` (E = 1) or `2^(N+1) - 2^(N-L)`."""
  if exponent_bits == 1:
    return 2.0 ** (mantissa_bits + 1) - 0.5  # b - 1 = L + 1 magnitude bits
  n = 2**exponent_bits - 2
  return 2.0 ** (n + 1) - 2.0 ** (n - mantissa_bits)


def unit_levels(bits: int, significant_bits: int, signed: bool = True) -> np.ndarray:
  """All levels of the format in units of α, ascending, float64 (the reference for tests and λ)."""
  mantissa, exponent = format_bits(bits, significant_bits, signed)
  if exponent == 1:
    positive = np.arange(2 ** (mantissa + 1), dtype=np.float64) + 0.5
    return np.concatenate([-positive[::-1], positive])
  n = 2**exponent - 2
  below_two = np.arange(1, 2 ** (mantissa + 1), dtype=np.float64) * 2.0**-mantissa
  octaves = [
      2.0**e + np.arange(2**mantissa, dtype=np.float64) * 2.0 ** (e - mantissa)
      for e in range(1, n + 1)
  ]
  positive = np.concatenate([below_two, *octaves])
  if not signed:
    return np.concatenate([[0.0], positive])
  return np.concatenate([-positive[::-1], [0.0], positive])


def positive_levels(bits: int, significant_bits: int, signed: bool) -> int:
  """Positive levels (LSQ's Qp): 2^(b-1) mid-rise, 2^(b-1) - 1 signed, 2^b - 1 unsigned."""
  mantissa, exponent = format_bits(bits, significant_bits, signed)
  if exponent == 1:
    return 2 ** (mantissa + 1)
  return 2 ** (mantissa + exponent) - 1


def quantize_unit(u: Array, fmt: _Format) -> Array:
  """The ESB level of `u` (in units of α): METHODS.md §5's formula, no gradient rules."""
  if fmt.exponent_bits == 1:
    top = 2 ** (fmt.mantissa_bits + 1) - 1
    index = jnp.clip(jnp.round(jnp.abs(u) - 0.5), 0, top)
    return jnp.where(u < 0, -1.0, 1.0).astype(u.dtype) * (index + 0.5)
  if not fmt.signed:
    u = jnp.maximum(u, 0.0)
  n = 2**fmt.exponent_bits - 2
  # floor(log2|u|) read off the float32 bits: exact (log2 can be off by one at powers of two).
  exponent, _ = floatbits.split(jnp.abs(u))
  e = jnp.clip(exponent, 0, n)
  step = floatbits.power_of_two(e - fmt.mantissa_bits).astype(u.dtype)
  inverse = floatbits.power_of_two(fmt.mantissa_bits - e).astype(u.dtype)  # exact: powers of 2
  top = _top_level(fmt, u.dtype)
  return jnp.clip(step * jnp.round(u * inverse), -top, top)


def _top_level(fmt: _Format, dtype) -> float:
  """The largest level representable in `dtype` (wide exponent fields exceed float32's range)."""
  top = max_level(fmt.mantissa_bits, fmt.exponent_bits)
  emax = int(jnp.finfo(dtype).maxexp) - 1
  return min(top, 2.0 ** (emax + 1) - 2.0 ** (emax - fmt.mantissa_bits))


def _inside(u: Array, fmt: _Format) -> Array:
  top = _top_level(fmt, u.dtype)
  lo = -top if fmt.signed else 0.0
  return (u >= lo) & (u <= top)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def esb_quantize(x: Array, alpha: Array, fmt: _Format) -> Array:
  """`α·q(x/α)`, q the ESB level; straight-through for x, LSQ-style for a learned α."""
  return alpha * quantize_unit(x / alpha, fmt)


def _esb_quantize_fwd(x, alpha, fmt):
  u = x / alpha
  q = quantize_unit(u, fmt)
  return alpha * q, (u, q, alpha)


def _esb_quantize_bwd(fmt, residuals, g):
  u, q, alpha = residuals
  inside = _inside(u, fmt)
  dx = estimators.input_grad(g, inside, fmt.estimator)
  if fmt.learn_alpha:
    # LSQ: d(α·q(x/α))/dα = q(u) - u inside the range (STE for q), the clip level q(u) outside.
    dq_dalpha = jnp.where(inside, q - u, q)
    num_per_alpha = g.size // max(jnp.size(alpha), 1)
    grad_scale = estimators.lsq_grad_scale(num_per_alpha, fmt.num_positive)
    dalpha = reduce_to(g * dq_dalpha, jnp.shape(alpha)) * grad_scale
  else:
    dalpha = jnp.zeros_like(alpha)
  return dx, dalpha


esb_quantize.defvjp(_esb_quantize_fwd, _esb_quantize_bwd)


@functools.cache
def _lambda_table() -> dict:
  with open(LAMBDA_TABLE_PATH) as f:
    return json.load(f)


def lambda_for(bits: int, significant_bits: int, signed: bool = True) -> float:
  """λ(b, k): the MSE-optimal α/σ for a standard Gaussian (half-normal if unsigned), tabulated."""
  table = _lambda_table()["signed" if signed else "unsigned"]
  try:
    return float(table[str(bits)][str(significant_bits)])
  except KeyError:
    raise ValueError(
        f"no λ for bits={bits}, significant_bits={significant_bits}; regenerate the table with "
        "`python -m quantjax.quantizers.esb_lambda`") from None


def scale_statistic(x: Array, axes, signed: bool) -> Array:
  """σ̂: std(x) (signed), or the RMS of the positive values (unsigned: a half-normal's scale)."""
  x = jax.lax.stop_gradient(x).astype(jnp.float32)
  if signed:
    return jnp.std(x, axis=axes)
  positive = x > 0
  count = jnp.maximum(jnp.sum(positive, axis=axes), 1)
  return jnp.sqrt(jnp.sum(jnp.where(positive, jnp.square(x), 0.0), axis=axes) / count)


def soft_histogram(values: Array, centres: Array, width: Array) -> Array:
  """Normalised histogram with Gaussian kernels of std `width` at `centres` (differentiable)."""
  z = (jnp.ravel(values)[:, None] - centres[None, :]) / width  # [n, bins]
  weights = jnp.exp(-0.5 * jnp.square(z))
  weights = weights / (jnp.sum(weights, axis=1, keepdims=True) + 1e-12)  # each value sums to 1
  hist = jnp.sum(weights, axis=0)
  return hist / jnp.sum(hist)


def distribution_difference(x: Array, xq: Array, loss: str, bins: int = 64) -> Array:
  """DDA's D(x, xq): 'mse' / var(x), 'l1' / mean|x|, or 'kl' of soft histograms (KL(p_x||p_q))."""
  x = x.astype(jnp.float32)
  xq = xq.astype(jnp.float32)
  if loss == "mse":
    return jnp.mean(jnp.square(x - xq)) / (jax.lax.stop_gradient(jnp.var(x)) + 1e-12)
  if loss == "l1":
    return jnp.mean(jnp.abs(x - xq)) / (jax.lax.stop_gradient(jnp.mean(jnp.abs(x))) + 1e-12)
  if loss == "kl":
    both = jax.lax.stop_gradient(jnp.concatenate([jnp.ravel(x), jnp.ravel(xq)]))
    lo, hi = jnp.min(both), jnp.max(both)
    width = jnp.maximum(hi - lo, 1e-8) / bins
    centres = lo + (jnp.arange(bins, dtype=jnp.float32) + 0.5) * width
    p = soft_histogram(x, centres, width)
    q = soft_histogram(xq, centres, width)
    return jnp.sum(p * (jnp.log(p + 1e-8) - jnp.log(q + 1e-8)))
  raise ValueError(f"dda_loss={loss!r} is not valid; choose one of {', '.join(DDA_LOSSES)}")


@register("esb")
@dataclasses.dataclass(frozen=True, kw_only=True)
class ESB(Quantizer):
  """Elastic significant bits: k significant bits of b, scale from DDA (Gong et al. 2022)."""

  bits: int = 4  # b, total bits of the stored value (sign included when signed), 2 to 8
  significant_bits: int = 2  # k, 1 to b-1: k=1 is power-of-two, k=b-1 uniform mid-rise
  signed: bool = True  # False for post-ReLU inputs: no sign bit, the exponent gets the extra bit
  granularity: str = "tensor"  # 'tensor' or 'channel' (weights only: the output-channel axis)
  alpha: str = "lambda_std"  # 'lambda_std' (DDA form (a)) or 'learned' (form (b), LSQ gradient)
  dda_loss: str = "mse"  # aux_loss D(x, α·q(x/α)): 'mse' | 'l1' | 'kl' | 'none' (no aux loss)
  kl_bins: int = 64  # 'kl': soft-histogram bins spanning the range of x and its quantization
  estimator: str = "clipped_ste"  # 'ste' or 'clipped_ste' for dQ/dx
  momentum: float = 0.9  # moving average of the activation scale statistic σ̂

  def __post_init__(self):
    name = type(self).__name__
    check_bits(name, "bits", self.bits, hi=MAX_ESB_BITS)
    check_bits(name, "significant_bits", self.significant_bits, lo=1, hi=self.bits - 1)
    check_choice(name, "signed", self.signed, (True, False))
    check_choice(name, "granularity", self.granularity, GRANULARITIES)
    check_choice(name, "alpha", self.alpha, ALPHA_METHODS)
    check_choice(name, "dda_loss", self.dda_loss, DDA_LOSSES)
    check_choice(name, "estimator", self.estimator, estimators.ESTIMATORS)
    if not isinstance(self.kl_bins, int) or self.kl_bins < 2:
      raise ValueError(f"{name}.kl_bins={self.kl_bins!r} is out of range; valid: integers >= 2")
    check_momentum(name, self.momentum)

  # -- the format ----------------------------------------------------------------------------

  @property
  def mantissa_bits(self) -> int:
    return format_bits(self.bits, self.significant_bits, self.signed)[0]

  @property
  def exponent_bits(self) -> int:
    return format_bits(self.bits, self.significant_bits, self.signed)[1]

  @property
  def num_levels(self) -> int:
    """2^b: mid-rise (E = 1) and unsigned; 2^b - 1: signed with E >= 2 (±0 share a code)."""
    return len(unit_levels(self.bits, self.significant_bits, self.signed))

  @property
  def multiplier(self) -> Multiplier:
    """A k-bit significand product, then a shift by the E-bit exponent field (METHODS.md §5).

    Every magnitude is a k-bit integer significand (`2^L + mantissa`, or a denormal `j < 2^k`)
    times a power of two; the sign is an XOR. The mid-rise form (E = 1) has no exponent: its
    magnitude `2i + 1` is the k-bit index i times 2 plus 1 (an add, not a multiplier row).
    """
    shift = 0 if self.exponent_bits == 1 else self.exponent_bits
    return Multiplier("significand_shift", self.significant_bits, shift_bits=shift)

  @property
  def lambda_(self) -> float:
    """λ(b, k): α = λ·σ̂ under DDA form (a)."""
    return lambda_for(self.bits, self.significant_bits, self.signed)

  def describe(self) -> str:
    sign = "" if self.signed else "u"
    return f"esb{sign}{self.bits}k{self.significant_bits}/{self.granularity}/{self.alpha}"

  def _format(self) -> _Format:
    return _Format(self.mantissa_bits, self.exponent_bits, self.signed, self.estimator,
                   self.alpha == "learned",
                   positive_levels(self.bits, self.significant_bits, self.signed))

  def _alpha_from(self, sigma: Array) -> Array:
    return jnp.maximum(self.lambda_ * sigma, 1e-8)

  def _per_channel(self, role: str) -> bool:
    return role == "weight" and self.granularity == "channel"

  def scale(self, x: Array, params: Vars, state: Vars, role: str) -> Array:
    """α as `apply` uses it (without the training-time moving-average update)."""
    if self.alpha == "learned":
      return jnp.maximum(jnp.abs(params["alpha"]), 1e-8)
    if role == "act":
      return self._alpha_from(state["sigma"])
    axes = channel_reduce_axes(x, self._per_channel(role))
    return self._alpha_from(scale_statistic(x, axes, self.signed))

  # -- the contract --------------------------------------------------------------------------

  def init(self, x: Array, role: str) -> tuple[Vars, Vars]:
    self.validate_role(role)
    axes = channel_reduce_axes(x, self._per_channel(role))
    sigma = scale_statistic(x, axes, self.signed)
    if self.alpha == "learned":
      return {"alpha": self._alpha_from(sigma).astype(jnp.float32)}, {}
    if role == "act":
      return {}, {"sigma": sigma.astype(jnp.float32)}
    return {}, {}

  def apply(
      self, x: Array, params: Vars, state: Vars, role: str, training: bool
  ) -> tuple[Array, Vars]:
    state = self._updated_state(x, state, role, training)
    alpha = self.scale(x, params, state, role)
    if self.alpha == "lambda_std":
      alpha = jax.lax.stop_gradient(alpha)
    return esb_quantize(x, alpha.astype(x.dtype), self._format()), state

  def _updated_state(self, x: Array, state: Vars, role: str, training: bool) -> Vars:
    """The state `apply` uses: a training step moves an activation's σ̂ ('lambda_std')."""
    if self.alpha == "lambda_std" and role == "act" and training:
      batch_sigma = scale_statistic(x, None, self.signed)
      state = {"sigma": ema(state["sigma"], batch_sigma, self.momentum)}
    return state

  def integer_grid(self, x: Array, params: Vars, state: Vars, role: str,
                   training: bool) -> IntegerGrid:
    """`α·unit_scale · v`: the levels as integers `v = q/unit_scale` (see `unit_scale`)."""
    state = self._updated_state(x, state, role, training)
    alpha = jax.lax.stop_gradient(self.scale(x, params, state, role)).astype(x.dtype)
    hi = int(round(_top_level(self._format(), x.dtype) / self.unit_scale))
    return IntegerGrid(alpha * self.unit_scale, -hi if self.signed else 0, hi)

  def aux_loss(self, x: Array, q: Array, params: Vars, state: Vars, role: str) -> Array | None:
    """DDA's distribution difference between x and α·q(x/α), the code assignment held fixed."""
    del q  # recomputed with the assignment held fixed, so the gradient is DDA's, not the STE's
    if self.dda_loss == "none" or (role == "act" and self.alpha != "learned"):
      return None
    if role == "act":
      x = jax.lax.stop_gradient(x)
    alpha = self.scale(x, params, state, role)
    if self.alpha == "lambda_std":
      alpha = jax.lax.stop_gradient(alpha)
    alpha = alpha.astype(jnp.float32)
    codes = jax.lax.stop_gradient(quantize_unit(x.astype(jnp.float32) / alpha, self._format()))
    return distribution_difference(x, alpha * codes, self.dda_loss, self.kl_bins)

  def levels(self, params: Vars, state: Vars, x: Array | None = None,
             role: str = "weight") -> Array:
    """The representable values: shape α.shape + [num_levels] (weights with 'lambda_std' need x).

    Levels beyond float32's range (wide exponent fields) are dropped.
    """
    if self.alpha == "lambda_std" and role == "weight" and x is None:
      raise ValueError("ESB weight levels with alpha='lambda_std' depend on the weights: pass x")
    alpha = self.scale(x, params, state, role)
    unit = unit_levels(self.bits, self.significant_bits, self.signed)
    unit = unit[np.abs(unit) <= _FLOAT32_MAX]
    return alpha[..., None] * jnp.asarray(unit, jnp.float32)

  # -- integer export ------------------------------------------------------------------------

  @property
  def unit_scale(self) -> float:
    """The integers' unit in α: 2^-L (v = q·2^L, exponent field E >= 2) or 1/2 (mid-rise)."""
    return 0.5 if self.exponent_bits == 1 else 2.0**-self.mantissa_bits

  def weight_codes(self, kernel, params: Vars, state: Vars) -> WeightCodes:
    """Sign, exponent and mantissa fields ('float' layout), or sign and index ('odd', E = 1)."""
    w = jnp.asarray(kernel, jnp.float32)
    alpha = np.asarray(self.scale(w, params, state, "weight"), np.float64)
    scale = codes_lib.per_channel(alpha * self.unit_scale, w.shape[-1])
    out = self.fake_quant(w, params, state, "weight")
    values = codes_lib.integer_values(self.describe(), out, scale)
    sign = (values < 0).astype(np.int64)
    mag = np.abs(values)
    if self.exponent_bits == 1:  # mid-rise: v = ±(2i + 1)
      m_bits = self.mantissa_bits + 1
      return WeightCodes(self.registry_name, values, scale,
                         {"sign": (sign, 1, False), "mantissa": ((mag - 1) // 2, m_bits, False)},
                         "int", m_bits + 2, self.bits, {"mid_rise": True, "mantissa_bits": m_bits})
    L, E = self.mantissa_bits, self.exponent_bits
    exp_field, mant = codes_lib.encode_float(mag, L)
    if np.any(exp_field >= 2**E):
      raise ValueError(f"{self.describe()}: a weight needs an exponent field beyond {E} bits")
    return WeightCodes(self.registry_name, values, scale,
                       {"sign": (sign, 1, False), "exponent": (exp_field, E, False),
                        "mantissa": (mant, max(L, 1), False)},
                       "mantissa_shift", L + 1, self.bits,
                       {"mid_rise": False, "mantissa_bits": L, "exponent_bits": E})

  def act_codes(self, params: Vars, state: Vars) -> ActCodes:
    """A table of the levels as integers `q/unit_scale`, at scale `α·unit_scale`."""
    alpha = float(np.asarray(self.scale(None, params, state, "act"), np.float64))
    unit = unit_levels(self.bits, self.significant_bits, self.signed)
    table = np.unique(np.rint(unit / self.unit_scale).astype(np.int64))
    if codes_lib.int_bits(table) > 31:
      raise ValueError(f"{self.describe()}: levels need {codes_lib.int_bits(table)}-bit integers "
                       "(limit 31)")
    return ActCodes(self.registry_name, "table", alpha * self.unit_scale, self.bits, table=table)

