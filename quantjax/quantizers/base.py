"""The quantizer contract shared by every method.

A quantizer is a frozen, keyword-only dataclass (its config; hashable, so it can be static under
`jax.jit`) with two pure methods:

  init(x, role)                               -> (params, state)
  apply(x, params, state, role, training)     -> (q, new_state)

(`fake_quant(x, params, state, role)` is `apply`'s output at evaluation, compiled as one program,
for callers outside a trace.)

`params` are trainable (a learned step, a learned clip) and live in Flax's 'params' collection;
`state` is not trained by the optimizer (running ranges, cluster levels) and lives in the
'quant_state' collection. Both are dicts of arrays, so checkpoints carry them. The arithmetic of
each method is a module-level function with an explicit `jax.custom_vjp`.

`role` is 'weight' (the kernel; per-channel means the last, output-channel axis) or 'act' (the
input activation of a Conv/Dense layer; ranges are tracked with a moving average).

Everything else the package asks of a quantizer is a method or property here, so no code outside
`quantizers/` needs its name or its private members:

  levels(params, state, x=None, role='weight')  -> the representable values ([L] or [C, L])
  weight_codes(kernel, params, state)           -> WeightCodes: a kernel as integers and a scale
  integer_grid(x, params, state, role, training)
                                                -> IntegerGrid | None: apply's output as scale ·
                                                   integers, for integer products in training
  act_codes(params, state)                      -> ActCodes: an activation's integer codes
  storage, multiplier                           -> what the hardware stores and multiplies

`WeightCodes.decode(fields, meta)` is the one decode rule from stored fields back to integers
(`quantizers/codes.py` lists the layouts); the emulator calls it and nothing else.

Two properties describe the hardware a quantized tensor needs, for the cost model and reports:
`storage` (a `Storage`: the index bits per value and the level table stored beside them) and
`multiplier` (a `Multiplier`: the kind of multiplier and the operand width it sees). They differ
for table quantizers: NUUQ stores a log2 N-bit index but multiplies the b-bit grid value it selects.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from quantjax.quantizers import registry
from quantjax.quantizers.codes import ActCodes, WeightCodes

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


MULTIPLIER_KINDS = ("integer", "shift", "significand_shift", "float")


@dataclasses.dataclass(frozen=True)
class Storage:
  """What a quantized tensor stores: a code per value, and the level table the codes index.

  A plain b-bit code is `Storage(b)`: the code is the value, no table. A table quantizer stores an
  index per value plus `table_entries` integers of `table_bits` each, once per tensor (or, with
  `table_per_channel`, once per output channel of a kernel).
  """

  index_bits: float  # bits per value; equivalent bits (log2 N) for a non-power-of-two level count
  table_entries: int = 0  # entries of the level table; 0 = no table
  table_bits: int = 0  # width of one table entry
  table_per_channel: bool = False  # one table per output channel (kernels) instead of per tensor

  def table_memory_bits(self, channels: int = 1) -> int:
    """Bits of the tensor's level tables: one table, or one per output channel of `channels`."""
    return self.table_entries * self.table_bits * (channels if self.table_per_channel else 1)


@dataclasses.dataclass(frozen=True)
class Multiplier:
  """What the multiply of a MAC sees of one operand, and the kind of hardware that does it.

  Kinds (`MULTIPLIER_KINDS`):
  - 'integer': a full integer multiplier; `operand_bits` is the width of the integer multiplied
    (the code itself, or the table entry an index selects).
  - 'shift': the operand is a sign and an exponent code that shift the other operand (a barrel
    shifter and a conditional negation); `operand_bits` is the code width, sign included.
  - 'significand_shift': an `operand_bits`-wide significand product, then a shift by the exponent
    field (`shift_bits` wide; its add of two exponents is not a multiplier).
  - 'float': an unquantized operand, a float32 multiplier.
  """

  kind: str
  operand_bits: int  # width charged as this operand's side of the multiplier
  shift_bits: int = 0  # width of the exponent field that drives a shift; 0 = no shift

  def __post_init__(self):
    check_choice("Multiplier", "kind", self.kind, MULTIPLIER_KINDS)


@dataclasses.dataclass(frozen=True)
class IntegerGrid:
  """A quantized tensor as `scale · v`, `v` integers in [lo, hi] (`Quantizer.integer_grid`).

  `scale` is a traced array: a scalar, or one value per output channel of a weight (the kernel's
  last axis). `lo` and `hi` are static Python ints.
  """

  scale: Array
  lo: int
  hi: int


@functools.partial(jax.jit, static_argnums=(0, 4))
def _fake_quant(q: Quantizer, x: Array, params: Vars, state: Vars, role: str) -> Array:
  return q.apply(x, params, state, role, False)[0]


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

  def fake_quant(self, x, params: Vars, state: Vars, role: str) -> Array:
    """`apply(x, params, state, role, training=False)`'s output, compiled as one program.

    For callers outside a trace (the export, its checks): run op by op, every jnp operation of
    `apply` would compile and keep its own small executable for each shape, 1-2 MiB apiece.
    """
    return _fake_quant(self, jnp.asarray(x, jnp.float32), params, state, role)

  @property
  def bits(self) -> float:
    """Bits stored per value (equivalent bits for non-uniform level counts)."""
    raise NotImplementedError

  @property
  def storage(self) -> Storage:
    """What a tensor stores. The default is a plain code of `bits` bits per value and no table."""
    return Storage(float(self.bits))

  @property
  def multiplier(self) -> Multiplier:
    """What the multiplier sees. The default is the `bits`-bit code in a full integer multiplier."""
    return Multiplier("integer", math.ceil(self.bits))

  def levels(self, params: Vars, state: Vars, x: Array | None = None,
             role: str = "weight") -> Array:
    """The values `apply` can output, ascending along the last axis (for plots and tests).

    Args:
      params: the quantizer's params.
      state: its state.
      x: the tensor itself, where the levels depend on it (weights whose scale is a statistic of
        the kernel); None where params and state fix them (activations, learned scales).
      role: 'weight' or 'act'.

    Returns:
      float32 [L], or [C, L] with one level set per output channel of a per-channel weight
      quantizer. Merged levels may repeat.
    """
    raise NotImplementedError(f"{type(self).__name__} does not define levels()")

  def weight_codes(self, kernel: np.ndarray, params: Vars, state: Vars) -> WeightCodes:
    """The integer form of a trained kernel: integers, a per-channel scale and stored fields.

    `scale[c]·values[..., c]` must reproduce `apply(kernel, params, state, 'weight', False)`;
    `quantizers.codes` has the layouts and the helpers (`integer_values`, `plain_codes`, ...).

    Raises:
      ValueError: (one line) this quantizer, or this setting of it, has no exact integer form.
    """
    del kernel, params, state
    raise ValueError(f"{self.describe()}: weight quantizer {self.registry_name!r} has no integer "
                     f"export; exportable: {', '.join(_exportable('weight_codes'))}")

  def act_codes(self, params: Vars, state: Vars) -> ActCodes:
    """The integer codes this quantizer gives an activation (its trained params and state).

    Every output of `apply(x, params, state, 'act', False)` must be `scale·v`, v in `values()`.

    Raises:
      ValueError: (one line) this quantizer, or this setting of it, has no exact integer form.
    """
    del params, state
    raise ValueError(f"{self.describe()}: activation quantizer {self.registry_name!r} has no "
                     f"integer export; exportable: {', '.join(_exportable('act_codes'))}")

  def integer_grid(self, x: Array, params: Vars, state: Vars, role: str,
                   training: bool) -> IntegerGrid | None:
    """How `apply`'s output, for the same arguments, is a scale times integers, or None.

    Not None: `apply(x, params, state, role, training)[0]` is `scale · v` with `v` integers in
    [lo, hi]. The interceptor then forms a layer's products on those integers (int8 operands, an
    int32 sum) instead of on their float values; `quantjax.intercept.integer` says when.
    """
    del x, params, state, role, training
    return None

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


def _exportable(method: str) -> list[str]:
  """Registered quantizers that implement `method` ('weight_codes' or 'act_codes')."""
  return [n for n in registry.names()
          if getattr(registry.get(n), method) is not getattr(Quantizer, method)]


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
