"""NUUQ, non-uniform uniform quantization: N k-means levels that live on a b-bit fixed-point grid.

Zacchigna, Lew, Lutenberg, "Flexible Quantization for Efficient Convolutional Neural Networks",
Electronics 13(10):1923, 2024. METHODS.md §1 gives this project's reading of the abstract:

- The number of levels `N` (any integer >= 2: 3, 5 and 6 are allowed) is decoupled from the
  container width `b` of the fixed-point grid the levels live on.
- Per layer, 1-D k-means (Lloyd, quantile initialisation; `kmeans.py`) finds N levels of the
  weights; each level is snapped onto the uniform b-bit grid (step `s = 2^-F` with
  `F = b - 1 - ceil(log2 max|W|)`, or `s = max|W|/(2^(b-1)-1)`; codes `[-(2^(b-1)-1), 2^(b-1)-1]`).
  Levels that snap to the same grid point are merged: the N-entry table keeps its fixed shape and
  holds the merged value more than once; every weight of a merged level gets the first of those
  indices, so the merged entries are never used.
- Each weight is stored as an index into the layer's N-entry table of b-bit integers, so the
  spatial complexity is the index width (`log2 N` equivalent bits, `ceil(log2 N)` packed bits, or
  the entropy of the index histogram: `index_stats`) and the temporal complexity is the multiplier
  width `b` (`multiplier_bits`).
- Training (fine-tuning from a float checkpoint): the forward pass uses the snapped levels, the
  backward pass is straight-through to the latent float weights; the table lives in 'quant_state'
  and is re-estimated from the current weights every `recluster_every` training steps (and never
  from step `freeze_at` on), otherwise frozen. Evaluation uses the stored table.

NUUQ is a weight quantizer: the N-level table needs the whole tensor and is fitted per layer, so
activations (which change with every batch) are rejected with an error; use 'liss' (k-means or
k-quantile levels with running statistics) or 'uniform' / 'pact' for them.
"""

from __future__ import annotations

import dataclasses
import functools
import math

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
)
from quantjax.quantizers.codes import WeightCodes
from quantjax.quantizers.fixed_point import fractional_bits_for
from quantjax.quantizers.floatbits import power_of_two
from quantjax.quantizers.registry import register

GRIDS = ("pow2", "max")


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def snap_to_levels(x: Array, levels: Array, estimator: str) -> Array:
  """Each value of `x` replaced by its nearest entry of the ascending table `levels`.

  Backward: straight-through to `x` ('ste'), or only inside `[levels[0], levels[-1]]`
  ('clipped_ste'); the table gets no gradient (it is fitted, not learned).
  """
  del estimator
  return kmeans.nearest_level(x, levels).astype(x.dtype)


def _snap_to_levels_fwd(x, levels, estimator):
  return snap_to_levels(x, levels, estimator), (x, levels)


def _snap_to_levels_bwd(estimator, residuals, g):
  x, levels = residuals
  inside = (x >= levels[0]) & (x <= levels[-1])
  return estimators.input_grad(g, inside, estimator), jnp.zeros_like(levels)


snap_to_levels.defvjp(_snap_to_levels_fwd, _snap_to_levels_bwd)


@jax.jit
def index_stats(w: Array, state: Vars) -> dict[str, Array]:
  """The spatial-complexity figures of one layer's weights stored as indices into its table.

  Args:
    w: the layer's (latent float) weights, any shape.
    state: the quantizer state holding 'levels' ([N] ascending, merged entries repeated).

  Returns:
    'equivalent_bits' `log2 N`; 'packed_bits' `ceil(log2 N)`; 'entropy_bits' the entropy (bits per
    weight) of the histogram of the indices `w` maps to; 'histogram' [N] index counts;
    'distinct_levels' the number of different values in the table (N less the merged entries).
  """
  levels = state["levels"]
  n = levels.shape[0]
  idx = kmeans.nearest_index(w, levels)
  histogram = jnp.bincount(jnp.ravel(idx), length=n)
  p = histogram / jnp.maximum(jnp.sum(histogram), 1)
  entropy = -jnp.sum(jnp.where(p > 0, p * jnp.log2(jnp.where(p > 0, p, 1.0)), 0.0))
  distinct = 1 + jnp.sum(levels[1:] != levels[:-1])
  return {
      "equivalent_bits": jnp.float32(math.log2(n)),
      "packed_bits": jnp.int32(math.ceil(math.log2(n))),
      "entropy_bits": entropy.astype(jnp.float32),
      "histogram": histogram.astype(jnp.int32),
      "distinct_levels": distinct.astype(jnp.int32),
  }


@register("nuuq")
@dataclasses.dataclass(frozen=True, kw_only=True)
class NUUQ(Quantizer):
  """N k-means weight levels snapped onto a b-bit fixed-point grid (Zacchigna et al. 2024)."""

  num_levels: int = 4  # N, the number of levels (table entries) per layer; any integer >= 2
  container_bits: int = 8  # b, width of the fixed-point grid the levels live on (the multiplier)
  grid: str = "pow2"  # grid step: 'pow2' = 2^-F with F from max|W|, 'max' = max|W|/(2^(b-1)-1)
  recluster_every: int = 100  # K: re-fit the table every K training steps; 0 = only at init
  freeze_at: int | None = None  # no re-fit from this training step on (None = never freeze)
  kmeans_iters: int = 20  # Lloyd iterations after the quantile initialisation
  estimator: str = "ste"  # 'ste' or 'clipped_ste' (zero outside [min level, max level])

  def __post_init__(self):
    name = type(self).__name__
    check_bits(name, "container_bits", self.container_bits)
    points = 2**self.container_bits - 1  # grid points of the narrow symmetric b-bit range
    if not isinstance(self.num_levels, int) or not 2 <= self.num_levels <= points:
      raise ValueError(f"{name}.num_levels={self.num_levels!r} is out of range; valid: integers 2 "
                       f"to {points} (the grid points of container_bits={self.container_bits})")
    check_choice(name, "grid", self.grid, GRIDS)
    check_choice(name, "estimator", self.estimator, estimators.ESTIMATORS)
    if not isinstance(self.recluster_every, int) or self.recluster_every < 0:
      raise ValueError(f"{name}.recluster_every={self.recluster_every!r} is out of range; valid: "
                       "integers >= 0 (0 = never after init)")
    if self.freeze_at is not None and (not isinstance(self.freeze_at, int) or self.freeze_at < 0):
      raise ValueError(f"{name}.freeze_at={self.freeze_at!r} is out of range; valid: None or >= 0")
    if not isinstance(self.kmeans_iters, int) or self.kmeans_iters < 0:
      raise ValueError(f"{name}.kmeans_iters={self.kmeans_iters!r} is out of range; valid: >= 0")

  @property
  def bits(self) -> float:
    """Equivalent bits per stored weight, `log2 N` (3 levels = 1.58 bits)."""
    return math.log2(self.num_levels)

  @property
  def packed_bits(self) -> int:
    """Index width with plain packing, `ceil(log2 N)`."""
    return math.ceil(math.log2(self.num_levels))

  @property
  def multiplier_bits(self) -> int:
    """Temporal complexity: the width `b` of the integer multiplier (or b bit-serial cycles)."""
    return self.container_bits

  @property
  def storage(self) -> Storage:
    """A log2 N-bit index per weight and the layer's N-entry table of b-bit grid codes."""
    return Storage(self.bits, table_entries=self.num_levels, table_bits=self.container_bits)

  @property
  def multiplier(self) -> Multiplier:
    """The b-bit grid code an index selects, in a full b-bit integer multiplier."""
    return Multiplier("integer", self.container_bits)

  @property
  def qmax(self) -> int:
    return 2 ** (self.container_bits - 1) - 1

  def describe(self) -> str:
    return f"nuuq{self.num_levels}/b{self.container_bits}/{self.grid}"

  def validate_role(self, role: str) -> None:
    super().validate_role(role)
    if role == "act":
      raise ValueError("NUUQ quantizes weights only (its table is fitted per layer); use 'liss', "
                       "'uniform' or 'pact' for activations")

  # -- fitting the table ---------------------------------------------------------------------

  def grid_step(self, w: Array) -> Array:
    """The step `s` of the b-bit grid for weights `w`: `2^-F` or `max|W|/(2^(b-1)-1)`.

    `F = b - 1 - ceil(log2 max|W|)` is METHODS.md §4's rule; its largest grid point
    `(2^(b-1)-1)·2^-F` can fall just below max|W| (e.g. b=4, max|W|=0.5: 7/16), so a level past it
    clips by less than one step. k-means levels are cluster means, well inside the range.
    """
    max_abs = jnp.max(jnp.abs(w)).astype(jnp.float32)
    if self.grid == "pow2":
      return power_of_two(-fractional_bits_for(max_abs, self.container_bits))
    return jnp.maximum(max_abs / self.qmax, 1e-12)

  def fit(self, w: Array) -> tuple[Array, Array]:
    """(levels [N] ascending, grid step) for weights `w`: k-means centres snapped onto the grid."""
    w = jax.lax.stop_gradient(jnp.ravel(w)).astype(jnp.float32)
    step = self.grid_step(w)
    centres = kmeans.lloyd(w, self.num_levels, self.kmeans_iters)
    # `+ 0.0` turns a code of -0 into +0, so a level at zero prints and compares as 0.
    codes = jnp.clip(jnp.round(centres / step), -self.qmax, self.qmax) + 0.0
    return codes * step, step

  # -- the contract --------------------------------------------------------------------------

  def init(self, x: Array, role: str) -> tuple[Vars, Vars]:
    self.validate_role(role)
    levels, step = self.fit(x)
    return {}, {"levels": levels, "grid_step": step, "step": jnp.zeros((), jnp.int32)}

  def apply(
      self, x: Array, params: Vars, state: Vars, role: str, training: bool
  ) -> tuple[Array, Vars]:
    del params
    self.validate_role(role)
    if training:
      levels, step = jax.lax.cond(
          self._refits(state), lambda: self.fit(x), lambda: (state["levels"], state["grid_step"]))
      state = {"levels": levels, "grid_step": step, "step": state["step"] + 1}
    levels = jax.lax.stop_gradient(state["levels"]).astype(x.dtype)
    return snap_to_levels(x, levels, self.estimator), state

  def _refits(self, state: Vars) -> Array:
    """Whether this training step re-clusters the table (every `recluster_every` steps)."""
    count = state["step"]
    refit = jnp.bool_(self.recluster_every > 0) & (count > 0)
    refit &= count % max(self.recluster_every, 1) == 0
    if self.freeze_at is not None:
      refit &= count < self.freeze_at
    return refit

  def integer_grid(self, x: Array, params: Vars, state: Vars, role: str,
                   training: bool) -> IntegerGrid:
    """`s·c`: every level is a b-bit grid code c times the step s its table was fitted on."""
    del params, role
    step = state["grid_step"]
    if training:  # a re-clustering step fits the table, and its step, to this x
      step = jnp.where(self._refits(state), self.grid_step(x), step)
    return IntegerGrid(jax.lax.stop_gradient(step).astype(x.dtype), -self.qmax, self.qmax)

  def levels(self, params: Vars, state: Vars, x: Array | None = None,
             role: str = "weight") -> Array:
    """The N-entry table (ascending; merged levels repeated) for plots and tests."""
    del params, x, role
    return state["levels"]

  def weight_codes(self, kernel, params: Vars, state: Vars) -> WeightCodes:
    """The 'table' layout: a ceil(log2 N)-bit index into the b-bit grid codes of the levels."""
    w = jnp.asarray(kernel, jnp.float32)
    scale = codes_lib.per_channel(np.asarray(state["grid_step"], np.float64), w.shape[-1])
    out = self.fake_quant(w, params, state, "weight")
    values = codes_lib.integer_values(self.describe(), out, scale)
    return codes_lib.table_codes(self.registry_name, values, scale, self.num_levels,
                                 self.container_bits)

  def storage_stats(self, w: Array, params: Vars, state: Vars) -> dict[str, float]:
    """log2 N, ceil(log2 N) and the index entropy (bits per weight), and the multiplier width."""
    del params
    stats = index_stats(w, state)
    return {
        "equivalent_bits": float(stats["equivalent_bits"]),
        "packed_bits": float(stats["packed_bits"]),
        "entropy_bits": float(stats["entropy_bits"]),
        "distinct_levels": int(stats["distinct_levels"]),
        "multiplier_bits": self.multiplier_bits,
    }

  def integer_levels(self, state: Vars) -> tuple[Array, Array]:
    """(grid step `s`, [N] b-bit integer codes) with `levels = s·codes`, for integer export."""
    step = state["grid_step"]
    return step, jnp.round(state["levels"] / step).astype(jnp.int32)
