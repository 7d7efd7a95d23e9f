"""The quantizer contract shared by every method.

A quantizer is a frozen, keyword-only dataclass (its config; hashable, so it can be static under
`jax.jit`) with two pure methods:

  init(x, role)                               -> (params, state)
  apply(x, params, state, role, training)     -> (q, new_state)

`params` are trainable (a learned step, a learned clip) and live in Flax's 'params' collection;
`state` is not trained by the optimizer (running ranges, cluster levels) and lives in the
'quant_state' collection. Both are dicts of arrays, so checkpoints carry them. The arithmetic of
each method is a module-level function with an explicit `jax.custom_vjp`.

`role` is 'weight' (the kernel; per-channel means the last, output-channel axis) or 'act' (the
input activation of a Conv/Dense layer; ranges are tracked with a moving average).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

Array = jax.Array
Vars = dict[str, Any]

ROLES = ("weight", "act")
MIN_BITS, MAX_BITS = 2, 16


def check_choice(owner: str, field: str, value: Any, valid: tuple) -> None:
  """Raises a one-line ValueError if `value` is not one of `valid`."""
  if value not in valid:
    choices = ", ".join(map(str, valid))
    raise ValueError(f"{owner}.{field}={value!r} is not valid; choose one of {choices}")


def check_bits(owner: str, field: str, bits: Any, lo: int = MIN_BITS, hi: int = MAX_BITS) -> None:
  """Raises a one-line ValueError if `bits` is not an integer in [lo, hi]."""
  if not isinstance(bits, int) or isinstance(bits, bool) or not lo <= bits <= hi:
    raise ValueError(f"{owner}.{field}={bits!r} is out of range; valid: integers {lo} to {hi}")


def check_momentum(owner: str, momentum: float) -> None:
  """Raises a one-line ValueError unless the moving-average momentum is in [0, 1)."""
  if not 0.0 <= momentum < 1.0:
    raise ValueError(f"{owner}.momentum={momentum!r} is out of range; valid: [0, 1)")


@dataclasses.dataclass(frozen=True, kw_only=True)
class Quantizer:
  """Base class of quantizer configs. Subclasses are registered with `@register(name)`."""

  registry_name = "base"

  def init(self, x: Array, role: str) -> tuple[Vars, Vars]:
    """Initial (params, state) computed from a representative `x` (a kernel or a batch)."""
    del x, role
    return {}, {}

  def apply(
      self, x: Array, params: Vars, state: Vars, role: str, training: bool
  ) -> tuple[Array, Vars]:
    """Fake-quantized `x` (same shape and dtype) and the updated state."""
    raise NotImplementedError

  @property
  def bits(self) -> float:
    """Bits stored per value (equivalent bits for non-uniform level counts)."""
    raise NotImplementedError

  def aux_loss(self, x: Array, q: Array, params: Vars, state: Vars, role: str) -> Array | None:
    """Optional differentiable loss added to the task loss (e.g. ESB's distribution difference).

    The interceptor records it per layer in the 'quant_losses' collection; the train step adds
    `config.dda.weight` times their sum and reports each one. None = no auxiliary loss.
    """
    del x, q, params, state, role
    return None

  def storage_stats(self, w: Array, params: Vars, state: Vars) -> dict[str, float]:
    """Storage figures of a trained weight tensor for reports (bits per weight and the like).

    The default is the code width; index-table quantizers add packed bits and index entropy.
    """
    del w, params, state
    return {"equivalent_bits": float(self.bits)}

  def validate_role(self, role: str) -> None:
    """Raises if this config cannot quantize a tensor of `role` (e.g. per-channel activations)."""
    check_choice(type(self).__name__, "role", role, ROLES)
    if role == "act" and getattr(self, "granularity", "tensor") == "channel":
      raise ValueError(
          f"{type(self).__name__}.granularity='channel' is for weights only; activations use "
          "'tensor' (a per-input-channel scale cannot be factored out of the accumulation)")

  def describe(self) -> str:
    """Short human-readable label, e.g. 'uniform4/channel/max'."""
    return f"{self.registry_name}{self.bits:g}"


def reduce_to(t: Array, shape: tuple[int, ...]) -> Array:
  """Sums `t` over the leading axes broadcasting added, so it has `shape` (a scale's shape)."""
  if t.shape == tuple(shape):
    return t
  if len(shape) == 0:
    return jnp.sum(t)
  # Scales broadcast along the trailing axes: shape () or (C,) against x of shape (..., C).
  lead = t.ndim - len(shape)
  return jnp.sum(t, axis=tuple(range(lead)))


def channel_reduce_axes(x: Array, per_channel: bool) -> tuple[int, ...] | None:
  """Axes to reduce for a statistic: all (None) per tensor, all but the last per channel."""
  return tuple(range(x.ndim - 1)) if per_channel else None


def ema(old: Array, new: Array, momentum: float) -> Array:
  """Exponential moving average used for activation ranges."""
  return momentum * old + (1.0 - momentum) * new
