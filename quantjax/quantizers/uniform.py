"""Uniform integer quantization: symmetric or affine, per tensor or per output channel.

The step `s` comes from the tensor's max, a percentile, an MSE-optimal clip search, a learned
parameter (LSQ, Esser et al. 2020), or a power of two `s = 2^-F` (the Qm.n fixed-point form with
`F` fractional bits; F may be negative or larger than the bit width).

Symmetric codes are the narrow range `[-(2^(b-1)-1), 2^(b-1)-1]` (the code `-2^(b-1)` unused, so the
grid is symmetric); unsigned codes (`signed=False`, for post-ReLU inputs) are `[0, 2^b-1]`;
affine (`symmetric=False`) codes are `[0, 2^b-1]` with an integer zero point.
Rounding is half to even.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from quantjax.quantizers import base, estimators
from quantjax.quantizers import codes as codes_lib
from quantjax.quantizers.base import (
    Array,
    Quantizer,
    Vars,
    channel_reduce_axes,
    check_bits,
    check_choice,
    check_momentum,
    ema,
    reduce_to,
)
from quantjax.quantizers.fixed_point import fractional_bits_for
from quantjax.quantizers.floatbits import power_of_two
from quantjax.quantizers.registry import register

SCALE_METHODS = ("max", "percentile", "mse", "lsq", "pow2")
GRANULARITIES = ("tensor", "channel")


class _Grid(NamedTuple):
  """Static description of the integer grid, the non-differentiable argument of the VJP."""

  qmin: int
  qmax: int
  estimator: str
  learn_scale: bool


def code_range(bits: int, signed: bool, symmetric: bool) -> tuple[int, int]:
  """Integer code range [qmin, qmax] of a `bits`-wide code."""
  if not symmetric or not signed:
    return 0, 2**bits - 1
  return -(2 ** (bits - 1) - 1), 2 ** (bits - 1) - 1


def _fake_quant(x: Array, scale: Array, zero_point: Array, grid: _Grid) -> Array:
  codes = jnp.clip(jnp.round(x / scale + zero_point), grid.qmin, grid.qmax)
  return (codes - zero_point) * scale


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def fake_quant(x: Array, scale: Array, zero_point: Array, grid: _Grid) -> Array:
  """`(clip(round(x/s) + z, qmin, qmax) - z) * s`, with straight-through style gradients."""
  return _fake_quant(x, scale, zero_point, grid)


def _fake_quant_fwd(x, scale, zero_point, grid):
  # The input is saved, not x/s: x is usually written anyway (the layer before made it), and
  # the backward pass recomputes x/s and the codes where it reads them.
  return _fake_quant(x, scale, zero_point, grid), (x, scale, zero_point)


def _fake_quant_bwd(grid, residuals, g):
  x, scale, zero_point = residuals
  v = x / scale + zero_point
  codes = jnp.clip(jnp.round(v), grid.qmin, grid.qmax)
  inside = (v >= grid.qmin) & (v <= grid.qmax)
  dx = estimators.input_grad(g, inside, grid.estimator)
  if grid.learn_scale:
    # LSQ: dQ/ds = (round(v) - v) inside the range and the clip code outside it.
    dq_ds = jnp.where(inside, codes - v, codes - zero_point)
    num_per_scale = g.size // max(jnp.size(scale), 1)
    grad_scale = estimators.lsq_grad_scale(num_per_scale, grid.qmax)
    ds = reduce_to(g * dq_ds, jnp.shape(scale)) * grad_scale
  else:
    ds = jnp.zeros_like(scale)
  return dx, ds, jnp.zeros_like(zero_point)


fake_quant.defvjp(_fake_quant_fwd, _fake_quant_bwd)


@register("uniform")
@dataclasses.dataclass(frozen=True, kw_only=True)
class Uniform(Quantizer):
  """Uniform integer quantizer (the baseline of every table in METHODS.md)."""

  bits: int = 8  # width of the stored integer code, 2 to 16
  symmetric: bool = True  # symmetric about zero; False = affine with an integer zero point
  signed: bool = True  # False for non-negative (post-ReLU) inputs: codes [0, 2^b-1]
  granularity: str = "tensor"  # 'tensor' or 'channel' (weights only: the output-channel axis)
  scale_method: str = "max"  # 'max' | 'percentile' | 'mse' | 'lsq' (learned) | 'pow2' (Qm.n)
  percentile: float = 99.9  # for scale_method='percentile': the clip at this percentile of |x|
  mse_grid: int = 32  # for scale_method='mse': clip ratios searched in (0.2, 1] of max
  fractional_bits: int | None = None  # for 'pow2': fixed F; None derives F from the max
  estimator: str = "clipped_ste"  # 'ste' or 'clipped_ste' for dQ/dx ('lsq' always clips)
  momentum: float = 0.9  # moving average of activation ranges

  def __post_init__(self):
    name = type(self).__name__
    check_bits(name, "bits", self.bits)
    check_choice(name, "granularity", self.granularity, GRANULARITIES)
    check_choice(name, "scale_method", self.scale_method, SCALE_METHODS)
    check_choice(name, "estimator", self.estimator, estimators.ESTIMATORS)
    if not 0.0 < self.percentile <= 100.0:
      raise ValueError(f"{name}.percentile={self.percentile!r} is out of range; valid: (0, 100]")
    if self.scale_method == "pow2" and not self.symmetric:
      raise ValueError(
          f"{name}.scale_method='pow2' needs symmetric=True (fixed point has no zero point)")
    check_momentum(name, self.momentum)

  # -- the grid ------------------------------------------------------------------------------

  @property
  def qmin(self) -> int:
    return code_range(self.bits, self.signed, self.symmetric)[0]

  @property
  def qmax(self) -> int:
    return code_range(self.bits, self.signed, self.symmetric)[1]

  def describe(self) -> str:
    sign = "" if self.signed else "u"
    return f"uniform{sign}{self.bits}/{self.granularity}/{self.scale_method}"

  def _grid(self) -> _Grid:
    estimator = "clipped_ste" if self.scale_method == "lsq" else self.estimator
    return _Grid(self.qmin, self.qmax, estimator, self.scale_method == "lsq")

  # -- the statistics that set the step ------------------------------------------------------

  def _range(self, x: Array, per_channel: bool) -> tuple[Array, Array]:
    """(lo, hi) clip range of x from the configured statistic; lo = 0 or -hi when symmetric."""
    axes = channel_reduce_axes(x, per_channel)
    if self.symmetric:
      if self.scale_method == "percentile":
        hi = jnp.percentile(jnp.abs(x), self.percentile, axis=axes)
      elif self.scale_method == "mse":
        hi = self._mse_clip(x, axes)
      else:
        hi = jnp.max(jnp.abs(x), axis=axes)
      lo = -hi if self.signed else jnp.zeros_like(hi)
      return lo, hi
    if self.scale_method == "percentile":
      lo = jnp.percentile(x, 100.0 - self.percentile, axis=axes)
      hi = jnp.percentile(x, self.percentile, axis=axes)
    else:
      lo, hi = jnp.min(x, axis=axes), jnp.max(x, axis=axes)
    # The affine grid must contain zero exactly (zero padding, ReLU zeros).
    return jnp.minimum(lo, 0.0), jnp.maximum(hi, 0.0)

  def _mse_clip(self, x: Array, axes) -> Array:
    """The clip c in (0.2, 1]·max|x| minimising the quantization MSE (per channel if asked)."""
    max_abs = jnp.max(jnp.abs(x), axis=axes)
    ratios = jnp.linspace(1.0, 0.2, self.mse_grid, dtype=x.dtype)

    def mse(ratio):
      step = self._step_from_range(-ratio * max_abs, ratio * max_abs)
      q = jnp.clip(jnp.round(x / step), self.qmin, self.qmax) * step
      return jnp.mean(jnp.square(q - x), axis=axes)

    errors = jax.lax.map(mse, ratios)  # [G] or [G, C]
    return ratios[jnp.argmin(errors, axis=0)] * max_abs

  def _step_from_range(self, lo: Array, hi: Array) -> Array:
    if self.symmetric and self.signed:
      step = hi / self.qmax
    else:
      step = (hi - lo) / (self.qmax - self.qmin)
    return jnp.maximum(step, 1e-8)

  def _scale_and_zero(self, lo: Array, hi: Array) -> tuple[Array, Array]:
    if self.scale_method == "pow2":
      frac = (
          jnp.full_like(hi, self.fractional_bits, dtype=jnp.float32)
          if self.fractional_bits is not None
          else fractional_bits_for(hi, self.bits)
      )
      return power_of_two(-frac), jnp.zeros_like(hi)  # exact: the Qm.n grid (fixed_point.py)
    step = self._step_from_range(lo, hi)
    if self.symmetric:
      return step, jnp.zeros_like(step)
    zero_point = jnp.clip(jnp.round(-lo / step), self.qmin, self.qmax)
    return step, zero_point

  # -- the contract --------------------------------------------------------------------------

  def init(self, x: Array, role: str) -> tuple[Vars, Vars]:
    self.validate_role(role)
    per_channel = role == "weight" and self.granularity == "channel"
    if self.scale_method == "lsq":
      axes = channel_reduce_axes(x, per_channel)
      step = 2.0 * jnp.mean(jnp.abs(x), axis=axes) / math.sqrt(self.qmax)
      return {"scale": jnp.maximum(step, 1e-4).astype(jnp.float32)}, {}
    if role == "act":
      lo, hi = self._range(jax.lax.stop_gradient(x), per_channel=False)
      return {}, {"range_lo": lo.astype(jnp.float32), "range_hi": hi.astype(jnp.float32)}
    return {}, {}

  def apply(
      self, x: Array, params: Vars, state: Vars, role: str, training: bool
  ) -> tuple[Array, Vars]:
    scale, zero_point, state = self._step(x, params, state, role, training)
    return fake_quant(x, scale, zero_point, self._grid()), state

  def integer_grid(self, x: Array, params: Vars, state: Vars, role: str,
                   training: bool) -> base.IntegerGrid | None:
    """`s · (code - z)`: integers in [qmin, qmax] when the grid is symmetric (z = 0)."""
    if not self.symmetric:  # z is traced: the range of code - z is not known statically
      return None
    scale, _, _ = self._step(x, params, state, role, training)
    return base.IntegerGrid(scale, self.qmin, self.qmax)

  def _step(self, x: Array, params: Vars, state: Vars, role: str,
            training: bool) -> tuple[Array, Array, Vars]:
    """(scale, zero point, new state) as `apply` uses them, in `x`'s dtype."""
    per_channel = role == "weight" and self.granularity == "channel"
    if self.scale_method == "lsq":
      scale = jnp.abs(params["scale"]) + 1e-8
      zero_point = jnp.zeros_like(scale)
      if not self.symmetric:
        raise ValueError("Uniform.scale_method='lsq' is implemented for symmetric grids only")
      return scale.astype(x.dtype), zero_point.astype(x.dtype), state
    if role == "act":
      lo, hi = state["range_lo"], state["range_hi"]
      if training:
        batch_lo, batch_hi = self._range(jax.lax.stop_gradient(x), per_channel=False)
        lo, hi = ema(lo, batch_lo, self.momentum), ema(hi, batch_hi, self.momentum)
        state = {"range_lo": lo, "range_hi": hi}
    else:
      lo, hi = self._range(jax.lax.stop_gradient(x), per_channel)
    scale, zero_point = self._scale_and_zero(lo, hi)
    scale = jax.lax.stop_gradient(scale).astype(x.dtype)
    zero_point = jax.lax.stop_gradient(zero_point).astype(x.dtype)
    return scale, zero_point, state

  def levels(self, params: Vars, state: Vars, x: Array | None = None,
             role: str = "weight") -> Array:
    """`(code - z)·s` for every code: [L], or [C, L] per channel; weights (not LSQ) need `x`."""
    scale, zero_point = self._scale_and_zero_of(params, state, x, role)
    codes = jnp.arange(self.qmin, self.qmax + 1, dtype=jnp.float32)
    return (codes - zero_point[..., None]) * scale[..., None]

  def _scale_and_zero_of(self, params: Vars, state: Vars, x: Array | None,
                         role: str) -> tuple[Array, Array]:
    """(s, z) as `apply` uses them at evaluation (`_step` without the training-time update)."""
    if x is None and role == "weight" and self.scale_method != "lsq":
      raise ValueError(f"{self.describe()}: weight levels depend on the weights: pass x")
    x = jnp.zeros((), jnp.float32) if x is None else jnp.asarray(x, jnp.float32)  # only its dtype
    scale, zero_point, _ = self._step(x, params, state, role, training=False)
    return scale, zero_point

  def weight_codes(self, kernel, params: Vars, state: Vars) -> codes_lib.WeightCodes:
    """The 'codes' layout: `v = code - z`, stored as signed codes of `bits` (or more) bits."""
    w = jnp.asarray(kernel, jnp.float32)
    scale = self._export_scale(params) if self.scale_method == "lsq" else self._scale_and_zero_of(
        params, state, w, "weight")[0]
    scale = codes_lib.per_channel(scale, w.shape[-1])
    out = self.fake_quant(w, params, state, "weight")
    values = codes_lib.integer_values(self.describe(), out, scale)
    return codes_lib.plain_codes(self.registry_name, values, scale, self.bits)

  def act_codes(self, params: Vars, state: Vars) -> codes_lib.ActCodes:
    """Uniform codes [qmin, qmax] with the zero point `z`."""
    scale, zero = self._scale_and_zero_of(params, state, None, "act")
    if self.scale_method == "lsq":
      scale = self._export_scale(params)
    return codes_lib.ActCodes(self.registry_name, "uniform", float(scale),
                              self.bits, self.qmin, self.qmax, int(round(float(zero))))

  def _export_scale(self, params: Vars) -> np.ndarray:
    """The learned step |s| + 1e-8 in float64, as integer export has always computed it."""
    return np.abs(np.asarray(params["scale"], np.float64)) + 1e-8
