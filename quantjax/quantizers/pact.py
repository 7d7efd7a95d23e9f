"""PACT: parameterised clipping activation (Choi et al. 2018), a learned clip for activations.

Choi, Wang, Venkataramani, Chuang, Srinivasan, Gopalakrishnan, "PACT: Parameterized Clipping
Activation for Quantized Neural Networks", arXiv:1805.06085, 2018.

`y = clip(x, 0, α)` with a learned `α` per tensor ('params'), then `y` is quantized uniformly to
b unsigned bits: `Q(x) = round(y·(2^b-1)/α)·α/(2^b-1)` (half to even), so the codes are
`[0, 2^b-1]` and both 0 and α are levels. Gradients (the paper's eq. 3, straight-through inside):

  dQ/dx = 1 for 0 <= x < α, else 0;      dQ/dα = 1 for x >= α, else 0.

The quantization of the clipped value is ignored in dQ/dα, as in the paper. The paper also puts an
L2 penalty on α: that is the optimizer's weight decay on the 'input_alpha' parameter, not a loss
here. `α` enters as `|α|` (floored at 1e-6), so a step through zero cannot make the grid negative.

Initial α: `alpha_init` if given (6.0 is ReLU6's clip; the paper starts from 10), otherwise the
`init_percentile` of the init batch (the first training batch, see `train/loop.py`), which
falls back to 6.0 when that percentile is not positive (e.g. an all-zero sample batch).

PACT is for (post-ReLU) activations; negative inputs clip to 0. Weights are rejected.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp

from quantjax.quantizers.base import Array, IntegerGrid, Quantizer, Vars, check_bits
from quantjax.quantizers.codes import ActCodes
from quantjax.quantizers.registry import register

FALLBACK_ALPHA = 6.0


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def pact_quantize(x: Array, alpha: Array, qmax: int) -> Array:
  """`round(clip(x, 0, α)/s)·s` with `s = α/qmax`, and PACT's gradients to x and α."""
  step = alpha / qmax
  return jnp.round(jnp.clip(x, 0.0, alpha) / step) * step


def _pact_quantize_fwd(x, alpha, qmax):
  return pact_quantize(x, alpha, qmax), (x, alpha)


def _pact_quantize_bwd(qmax, residuals, g):
  del qmax
  x, alpha = residuals
  dx = jnp.where((x >= 0) & (x < alpha), g, jnp.zeros_like(g))
  dalpha = jnp.sum(jnp.where(x >= alpha, g, jnp.zeros_like(g)))
  return dx, jnp.reshape(dalpha, jnp.shape(alpha)).astype(alpha.dtype)


pact_quantize.defvjp(_pact_quantize_fwd, _pact_quantize_bwd)


@register("pact")
@dataclasses.dataclass(frozen=True, kw_only=True)
class PACT(Quantizer):
  """Learned activation clip α, then b-bit unsigned uniform quantization (Choi et al. 2018)."""

  bits: int = 4  # width of the unsigned code, 2 to 16: codes [0, 2^b-1]
  alpha_init: float | None = None  # initial α; None = the init_percentile of the init batch
  init_percentile: float = 99.9  # percentile of the init batch that sets α when alpha_init is None

  def __post_init__(self):
    name = type(self).__name__
    check_bits(name, "bits", self.bits)
    if self.alpha_init is not None and not self.alpha_init > 0:
      raise ValueError(f"{name}.alpha_init={self.alpha_init!r} is out of range; valid: None or > 0")
    if not 0.0 < self.init_percentile <= 100.0:
      raise ValueError(f"{name}.init_percentile={self.init_percentile!r} is out of range; "
                       "valid: (0, 100]")

  @property
  def qmax(self) -> int:
    return 2**self.bits - 1

  def describe(self) -> str:
    return f"pact{self.bits}"

  def validate_role(self, role: str) -> None:
    super().validate_role(role)
    if role == "weight":
      raise ValueError("PACT clips activations only (its α is a ReLU clip); use 'uniform' (e.g. "
                       "scale_method='lsq'), 'nuuq' or 'liss' for weights")

  def alpha(self, params: Vars) -> Array:
    """The clip actually used: |α|, floored at 1e-6."""
    return jnp.maximum(jnp.abs(params["alpha"]), 1e-6)

  def init(self, x: Array, role: str) -> tuple[Vars, Vars]:
    self.validate_role(role)
    if self.alpha_init is not None:
      alpha = jnp.asarray(self.alpha_init, jnp.float32)
    else:
      p = jnp.percentile(jax.lax.stop_gradient(x).astype(jnp.float32), self.init_percentile)
      alpha = jnp.where(p > 0, p, FALLBACK_ALPHA)
    return {"alpha": alpha}, {}

  def apply(
      self, x: Array, params: Vars, state: Vars, role: str, training: bool
  ) -> tuple[Array, Vars]:
    del training
    self.validate_role(role)
    return pact_quantize(x, self.alpha(params).astype(x.dtype), self.qmax), state

  def integer_grid(self, x: Array, params: Vars, state: Vars, role: str,
                   training: bool) -> IntegerGrid:
    """`i · α/(2^b-1)`, i = 0..2^b-1."""
    del state, training
    self.validate_role(role)
    return IntegerGrid(self.alpha(params).astype(x.dtype) / self.qmax, 0, self.qmax)

  def levels(self, params: Vars, state: Vars, x: Array | None = None,
             role: str = "weight") -> Array:
    """The 2^b representable values `i·α/(2^b-1)`, i = 0..2^b-1."""
    del state, x, role
    return jnp.arange(self.qmax + 1, dtype=jnp.float32) * (self.alpha(params) / self.qmax)

  def act_codes(self, params: Vars, state: Vars) -> ActCodes:
    """Unsigned uniform codes [0, 2^b-1] at scale `α/(2^b-1)`."""
    del state
    return ActCodes(self.registry_name, "uniform", float(self.alpha(params)) / self.qmax,
                    self.bits, 0, self.qmax, 0)
