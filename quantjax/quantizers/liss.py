"""Single-scale integer non-uniform quantizer (Liss et al.).

Liss, Baskin, Mendelson, Bronstein, Giryes, "Efficient non-uniform quantizer for quantized neural
network targeting reconfigurable hardware", arXiv:1811.10869, 2018. METHODS.md §3 gives this
project's reading of the abstract:

- `2^b` non-uniform levels per tensor, then every level approximated as an integer multiple of ONE
  per-tensor scale: `q_i = Δ·n_i` with `n_i` an M-bit integer (`M > b`). Δ maps the largest |level|
  to the largest code, `2^(M-1)-1` signed or `2^M-1` unsigned; `n_i = round(level_i/Δ)`. Levels that
  round to the same integer are merged (the table keeps 2^b entries, the merged value repeated).
  Storage is a b-bit index plus the 2^b-entry table of `n_i`; the MAC is `n_w·n_a` and a layer
  rescales once by `Δ_w·Δ_a` (`integer_levels` returns `(Δ, n)` for the integer export).
- The levels (`fit`):
  - 'gaussian' / 'laplace': the k-quantile levels of a fitted distribution: the k = 2^b bins of
    equal probability, each represented by its median, i.e. the quantile at the bin's middle
    probability `(i + 1/2)/k` (closed form; the conditional mean of each bin would be the
    MSE-optimal alternative). Fits: Gaussian `(mean, std)`; Laplace `(mean, mean|x - mean|)` (the
    mean rather than the median as location: no sort per step, and equal for symmetric weights).
  - 'kmeans': 1-D k-means (Lloyd, `kmeans.py`) with k = 2^b.
- Signed tensors (weights; `signed=None` means weights signed, activations unsigned) use all 2^b
  levels as above (an even count, so zero is not a level). Unsigned tensors (activations after
  ReLU) always keep the level 0 (ReLU zeros and padding are most of the values) and place the other
  2^b - 1 levels on the positive values: k-quantiles of a half-normal (scale `sqrt(E[x²|x>0])`)
  or an exponential (scale `E[x|x>0]`) fit, or k-means of the positive values.
- Weights with 'gaussian'/'laplace' are re-fitted from the current weights on every call (a cheap
  closed form; nothing is stored). Activations track the fit's `(loc, scale)` with a moving
  average in 'quant_state' (updated only in training). With 'kmeans' the (unsnapped) centres live in
  'quant_state' and are re-fitted every `recluster_every` training steps, like NUUQ; for
  activations the new batch's centres are blended in with the moving average.
- Every value goes to the nearest entry of the integer-snapped table (the MSE-optimal encoder for a
  given table, and what integer inference does); the same table is used in training and inference.
  The backward pass is straight-through ('ste', or 'clipped_ste': zero outside the table's range).
- `noise=True` (UNIQ, Baskin et al. 2018, same group): in training, weights are not quantized but
  get additive uniform noise as wide as their local quantization bin, `x + w(x)·(u - 1/2)` with
  `u ~ U[0, 1)` and `w(x)` the distance between the decision thresholds (midpoints of neighbouring
  levels) around x's nearest level (the outermost bins are taken symmetric about their level). The
  gradient is exactly straight-through. The noise key lives in 'quant_state' (split on each training
  call). Activations are always quantized; evaluation always quantizes.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from quantjax.quantizers import codes as codes_lib
from quantjax.quantizers import estimators, kmeans
from quantjax.quantizers.base import (
  Array,
  IntegerGrid,
  Multiplier,
  Quantizer,
  Storage,
  Vars,
  check_bits,
  check_choice,
  check_momentum,
  ema,
)
from quantjax.quantizers.codes import ActCodes, WeightCodes
from quantjax.quantizers.nuuq import snap_to_levels
from quantjax.quantizers.registry import register

FITS = ("gaussian", "laplace", "kmeans")
MAX_INDEX_BITS = 8  # a 2^b-entry table per tensor: 256 entries at most
MAX_INT_BITS = 16


def standard_quantile(p: Array, fit: str) -> Array:
  """Quantile function of the standard (loc 0, scale 1) Gaussian or Laplace distribution."""
  if fit == "gaussian":
    return jax.scipy.special.ndtri(p)
  c = p - 0.5
  return -jnp.sign(c) * jnp.log1p(-2.0 * jnp.abs(c))


def half_quantile(p: Array, fit: str) -> Array:
  """Quantile function of |X|, X standard: the half-normal (Gaussian) or exponential (Laplace)."""
  if fit == "gaussian":
    return jax.scipy.special.ndtri(0.5 * (1.0 + p))
  return -jnp.log1p(-p)


def quantile_levels(loc: Array, scale: Array, k: int, fit: str, signed: bool) -> Array:
  """Ascending k-quantile levels: each equal-probability bin represented by its median.

  Signed: the k bins of the fitted distribution, level i at probability `(i + 1/2)/k`.
  Unsigned: the level 0, then the k-1 bins of the half distribution.
  """
  if signed:
    p = (jnp.arange(k, dtype=jnp.float32) + 0.5) / k
    return loc + scale * standard_quantile(p, fit)
  p = (jnp.arange(k - 1, dtype=jnp.float32) + 0.5) / (k - 1)
  return jnp.concatenate([jnp.zeros((1,), jnp.float32), scale * half_quantile(p, fit)])


def integer_table(levels: Array, int_bits: int, signed: bool) -> tuple[Array, Array]:
  """One scale Δ and M-bit integers n (as floats) with `Δ·n` approximating the levels.

  Δ maps the largest |level| to the largest code (`2^(M-1)-1` signed, `2^M-1` unsigned) and
  `n = round(level/Δ)` (half to even; monotone, so the table stays ascending).
  """
  lo, nmax = integer_range(int_bits, signed)
  delta = jnp.maximum(jnp.max(jnp.abs(levels)), 1e-12) / nmax
  # `+ 0.0` turns a code of -0 into +0.
  n = jnp.clip(jnp.round(levels / delta), lo, nmax) + 0.0
  return delta, n


def integer_range(int_bits: int, signed: bool) -> tuple[int, int]:
  """[lo, hi] of the M-bit integers n: symmetric signed, or unsigned."""
  nmax = 2 ** (int_bits - 1) - 1 if signed else 2**int_bits - 1
  return (-nmax if signed else 0), nmax


def inject_noise(x: Array, levels: Array, u: Array) -> Array:
  """UNIQ-style training forward: `x + w(x)·(u - 1/2)`, w(x) the width of x's quantization bin.

  The bin of level i spans the midpoints to its neighbours; the outermost bins are symmetric about
  their level. The noise is a constant for autodiff, so the gradient is straight-through.
  """
  midpoints = 0.5 * (levels[1:] + levels[:-1])
  edges = jnp.concatenate([
      (1.5 * levels[:1] - 0.5 * levels[1:2]), midpoints, (1.5 * levels[-1:] - 0.5 * levels[-2:-1])
  ])  # [k+1]: bin i is [edges[i], edges[i+1]]
  width = kmeans.interval_lookup(x, midpoints, edges[1:] - edges[:-1])
  return x + jax.lax.stop_gradient(width * (u - 0.5)).astype(x.dtype)


@register("liss")
@dataclasses.dataclass(frozen=True, kw_only=True)
class Liss(Quantizer):
  """2^b non-uniform levels per tensor, all integer multiples of one scale (Liss et al. 2018)."""

  bits: int = 4  # b, width of the stored index (2^b levels), 2 to 8
  int_bits: int = 8  # M > b, width of the integers n_i with level_i = Δ·n_i (the multiplier)
  fit: str = "gaussian"  # levels: 'gaussian' | 'laplace' k-quantiles, or 'kmeans'
  signed: bool | None = None  # None: weights signed, activations unsigned (post-ReLU, level 0 kept)
  noise: bool = False  # training forward adds uniform noise of the local bin width (weights, UNIQ)
  seed: int = 0  # seed of the noise (folded with the tensor's initial values per layer)
  momentum: float = 0.9  # moving average of activation fits (and of their k-means centres)
  recluster_every: int = 100  # 'kmeans': re-fit every K training steps; 0 = only at init
  kmeans_iters: int = 20  # 'kmeans': Lloyd iterations after the quantile initialisation
  estimator: str = "ste"  # 'ste' or 'clipped_ste' (zero outside the table's range)

  def __post_init__(self):
    name = type(self).__name__
    check_bits(name, "bits", self.bits, hi=MAX_INDEX_BITS)
    check_bits(name, "int_bits", self.int_bits, lo=self.bits + 1, hi=MAX_INT_BITS)
    check_choice(name, "fit", self.fit, FITS)
    check_choice(name, "signed", self.signed, (None, True, False))
    check_choice(name, "noise", self.noise, (True, False))
    check_choice(name, "estimator", self.estimator, estimators.ESTIMATORS)
    check_momentum(name, self.momentum)
    if not isinstance(self.recluster_every, int) or self.recluster_every < 0:
      raise ValueError(f"{name}.recluster_every={self.recluster_every!r} is out of range; valid: "
                       "integers >= 0 (0 = never after init)")
    if not isinstance(self.kmeans_iters, int) or self.kmeans_iters < 0:
      raise ValueError(f"{name}.kmeans_iters={self.kmeans_iters!r} is out of range; valid: >= 0")

  @property
  def num_levels(self) -> int:
    return 2**self.bits

  @property
  def multiplier_bits(self) -> int:
    """Width of the integer multiplier operand, M."""
    return self.int_bits

  @property
  def storage(self) -> Storage:
    """A b-bit index per value and the tensor's 2^b-entry table of M-bit integers n_i."""
    return Storage(float(self.bits), table_entries=self.num_levels, table_bits=self.int_bits)

  @property
  def multiplier(self) -> Multiplier:
    """The M-bit integer n_i an index selects, in a full M-bit integer multiplier."""
    return Multiplier("integer", self.int_bits)

  def describe(self) -> str:
    return f"liss{self.bits}/M{self.int_bits}/{self.fit}" + ("+noise" if self.noise else "")

  def is_signed(self, role: str) -> bool:
    return role == "weight" if self.signed is None else self.signed

  # -- the levels before integer snapping ----------------------------------------------------

  def fit_distribution(self, x: Array, signed: bool) -> tuple[Array, Array]:
    """(loc, scale) of the Gaussian / Laplace fit (unsigned: of the half distribution, loc 0)."""
    x = jax.lax.stop_gradient(jnp.ravel(x)).astype(jnp.float32)
    if signed:
      loc = jnp.mean(x)
      if self.fit == "gaussian":
        return loc, jnp.std(x)
      return loc, jnp.mean(jnp.abs(x - loc))
    positive = x > 0
    count = jnp.maximum(jnp.sum(positive), 1)
    moment = jnp.square(x) if self.fit == "gaussian" else x
    m = jnp.sum(jnp.where(positive, moment, 0.0)) / count
    scale = jnp.sqrt(m) if self.fit == "gaussian" else m
    return jnp.zeros((), jnp.float32), scale

  def kmeans_levels(self, x: Array, signed: bool) -> Array:
    """Ascending k-means centres: 2^b of x (signed), or 0 and 2^b - 1 of x's positive values."""
    x = jax.lax.stop_gradient(jnp.ravel(x)).astype(jnp.float32)
    if signed:
      return kmeans.lloyd(x, self.num_levels, self.kmeans_iters)
    centres = kmeans.lloyd(x, self.num_levels - 1, self.kmeans_iters, mask=x > 0)
    return jnp.concatenate([jnp.zeros((1,), jnp.float32), centres])

  def raw_levels(self, x: Array | None, state: Vars, role: str) -> Array:
    """The 2^b ascending levels before integer snapping, from `state` or (weights) from `x`."""
    signed = self.is_signed(role)
    if self.fit == "kmeans":
      return state["centres"]
    if role == "act":
      loc, scale = state["loc"], state["scale"]
    else:
      if x is None:
        raise ValueError("Liss weight levels are fitted from the weights: pass x")
      loc, scale = self.fit_distribution(x, signed)
    return quantile_levels(loc, scale, self.num_levels, self.fit, signed)

  # -- the contract --------------------------------------------------------------------------

  def init(self, x: Array, role: str) -> tuple[Vars, Vars]:
    self.validate_role(role)
    signed = self.is_signed(role)
    state = {}
    if self.fit == "kmeans":
      state = {"centres": self.kmeans_levels(x, signed), "step": jnp.zeros((), jnp.int32)}
    elif role == "act":
      loc, scale = self.fit_distribution(x, signed)
      state = {"loc": loc, "scale": scale}
    if self.noise and role == "weight":
      salt = jax.lax.bitcast_convert_type(jnp.sum(x).astype(jnp.float32), jnp.uint32)
      key = jax.random.fold_in(jax.random.key(self.seed), salt)
      state["noise_key"] = jax.random.key_data(key)
    return {}, state

  def _updated_state(self, x: Array, state: Vars, role: str) -> Vars:
    """The state after one training call: running fits or periodic k-means."""
    signed = self.is_signed(role)
    new = dict(state)
    if self.fit == "kmeans":
      count = state["step"]
      refit = jnp.bool_(self.recluster_every > 0) & (count > 0)
      refit &= count % max(self.recluster_every, 1) == 0
      if role == "act":
        fresh = lambda: ema(state["centres"], self.kmeans_levels(x, signed), self.momentum)
      else:
        fresh = lambda: self.kmeans_levels(x, signed)
      new["centres"] = jax.lax.cond(refit, fresh, lambda: state["centres"])
      new["step"] = count + 1
    elif role == "act":
      loc, scale = self.fit_distribution(x, signed)
      new["loc"] = ema(state["loc"], loc, self.momentum)
      new["scale"] = ema(state["scale"], scale, self.momentum)
    return new

  def apply(
      self, x: Array, params: Vars, state: Vars, role: str, training: bool
  ) -> tuple[Array, Vars]:
    del params
    if training:
      state = self._updated_state(x, state, role)
    levels = jax.lax.stop_gradient(self.levels({}, state, x, role)).astype(x.dtype)
    if training and self.noise and role == "weight":
      next_key, noise_key = jax.random.split(jax.random.wrap_key_data(state["noise_key"]))
      state = {**state, "noise_key": jax.random.key_data(next_key)}
      u = jax.random.uniform(noise_key, x.shape, jnp.float32)
      return inject_noise(x, levels, u), state
    return snap_to_levels(x, levels, self.estimator), state

  def integer_grid(self, x: Array, params: Vars, state: Vars, role: str,
                   training: bool) -> IntegerGrid | None:
    """`Δ·n_i`, n_i M-bit integers; None while noise is injected into training weights."""
    del params
    if training and self.noise and role == "weight":
      return None
    if training:
      state = self._updated_state(x, state, role)
    delta, _ = integer_table(self.raw_levels(x, state, role), self.int_bits, self.is_signed(role))
    return IntegerGrid(jax.lax.stop_gradient(delta).astype(x.dtype),
                       *integer_range(self.int_bits, self.is_signed(role)))

  def integer_levels(self, params: Vars, state: Vars, x: Array | None = None,
                     role: str = "weight") -> tuple[Array, Array]:
    """(Δ, [2^b] int32 n_i) with levels `Δ·n_i`; weights with a closed-form fit need `x`."""
    del params
    delta, n = integer_table(self.raw_levels(x, state, role), self.int_bits, self.is_signed(role))
    return delta, n.astype(jnp.int32)

  def levels(self, params: Vars, state: Vars, x: Array | None = None,
             role: str = "weight") -> Array:
    """The 2^b representable values `Δ·n_i` (ascending, merged levels repeated)."""
    del params
    delta, n = integer_table(self.raw_levels(x, state, role), self.int_bits, self.is_signed(role))
    return delta * n

  def weight_codes(self, kernel, params: Vars, state: Vars) -> WeightCodes:
    """The 'table' layout: a b-bit index into the M-bit integers n_i, scale Δ."""
    w = jnp.asarray(kernel, jnp.float32)
    delta, _ = self.integer_levels(params, state, w, "weight")
    scale = codes_lib.per_channel(np.asarray(delta, np.float64), w.shape[-1])
    out = self.fake_quant(w, params, state, "weight")
    values = codes_lib.integer_values(self.describe(), out, scale)
    return codes_lib.table_codes(self.registry_name, values, scale, self.num_levels,
                                 self.int_bits)

  def act_codes(self, params: Vars, state: Vars) -> ActCodes:
    """A table of the distinct integers n_i at scale Δ."""
    delta, n = self.integer_levels(params, state, None, "act")
    table = np.unique(np.asarray(n, np.int64))
    return ActCodes(self.registry_name, "table", float(np.asarray(delta, np.float64)), self.bits,
                    table=table)
