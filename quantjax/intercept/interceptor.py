"""Applies a QuantPlan to an unmodified flax.linen model through a method interceptor.

For each nn.Conv / nn.Dense in the plan, the interceptor swaps a quantizing
`conv_general_dilated` / `dot_general` into the module for the duration of its `__call__`: the
swapped function fake-quantizes its two operands (the input activation and the kernel) and calls
the `jax.lax` primitive: on their integers where both quantizers put them on integer grids
(`quantjax.intercept.integer`), on the fake-quantized floats otherwise. A bias quantizer replaces
the module's bias `b` in its result by `Q(b)` (`y + (Q(b) - b)`: exact up to one float rounding
of the sum), and an output quantizer quantizes
the module's return value. Quantizer variables are created on the intercepted module itself, so
they sit beside the kernel in the variable tree: trainable ones in 'params' (`kernel_scale`,
`input_scale`, ...), running statistics in 'quant_state' (`bias_*`, `output_*` likewise).

The interceptor is trace-time Python state, invisible to `jax.jit`'s cache key: enter it *inside*
the jitted function (`quantized_apply` does), never around a call to an already-jitted function.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
from flax import traverse_util

from quantjax.intercept import integer
from quantjax.intercept.layers import QUANTIZABLE, module_path
from quantjax.intercept.plan import TENSOR_ROLE, QuantPlan
from quantjax.quantizers.base import IntegerGrid, Quantizer

QUANT_STATE = "quant_state"
QUANT_LOSSES = "quant_losses"
_PREFIX = {"weight": "kernel", "act": "input", "bias": "bias", "output": "output"}


def _quantize_operand(module: nn.Module, quantizer: Quantizer, x: jax.Array, tensor: str,
                      training: bool, with_grid: bool = False
                      ) -> tuple[jax.Array, IntegerGrid | None]:
  """Fake-quantizes `x` with the module's own quantizer variables, creating them if missing.

  `tensor` is a LayerQuant field ('weight', 'act', 'bias' or 'output'); it names the variables
  (`_PREFIX`) and sets the quantizer role (static tensors 'weight', data 'act').

  Returns:
    The fake-quantized `x`, and (if `with_grid`) its integer grid (`Quantizer.integer_grid`) or
    None.
  """
  prefix = _PREFIX[tensor]
  role = TENSOR_ROLE[tensor]
  init = functools.cache(lambda: quantizer.init(jax.lax.stop_gradient(x), role))
  shapes = jax.eval_shape(lambda: quantizer.init(x, role))
  params = {
      name: module.param(f"{prefix}_{name}", lambda _rng, n=name: init()[0][n])
      for name in shapes[0]
  }
  state_vars = {
      name: module.variable(QUANT_STATE, f"{prefix}_{name}", lambda n=name: init()[1][n])
      for name in shapes[1]
  }
  state = {name: v.value for name, v in state_vars.items()}
  q, new_state = quantizer.apply(x, params, state, role, training)
  grid = quantizer.integer_grid(x, params, state, role, training) if with_grid else None
  if module.is_mutable_collection(QUANT_LOSSES):
    aux = quantizer.aux_loss(x, q, params, state, role)
    if aux is not None:
      module.sow(QUANT_LOSSES, f"{prefix}_loss", aux)
  if training and module.is_mutable_collection(QUANT_STATE):
    for name, v in state_vars.items():
      v.value = new_state[name]
  return q, grid


def make_interceptor(plan: QuantPlan, *, training: bool) -> Callable:
  """The `nn.intercept_methods` interceptor that applies `plan`."""
  layer_quant = plan.as_dict()

  def interceptor(next_fun, args, kwargs, context):
    module = context.module
    if context.method_name != "__call__" or not isinstance(module, QUANTIZABLE):
      return next_fun(*args, **kwargs)
    lq = layer_quant.get(module_path(module))
    if lq is None:
      return next_fun(*args, **kwargs)

    field = "conv_general_dilated" if isinstance(module, nn.Conv) else "dot_general"
    primitive = getattr(module, field) or getattr(jax.lax, field)
    # A module's own primitive (its `conv_general_dilated` / `dot_general` field) keeps the float
    # operands it was written for; only jax.lax's takes the integers.
    own = getattr(module, field) is not None

    def quantized_primitive(lhs, rhs, *a, **kw):  # lhs: input [B, ...], rhs: kernel
      act = weight = None
      grids = not own and plan.integer_products != "off"
      if lq.act is not None:
        lhs, act = _quantize_operand(module, lq.act, lhs, "act", training, grids)
      if lq.weight is not None:
        rhs, weight = _quantize_operand(module, lq.weight, rhs, "weight", training, grids)
      if grids and "preferred_element_type" not in kw and integer.eligible(
          plan.integer_products, act, weight, rhs.shape):
        return integer.product(lambda x, w, **k: primitive(x, w, *a, **kw, **k), lhs, rhs,
                               act, weight)
      return primitive(lhs, rhs, *a, **kw)

    # Modules are frozen dataclasses; swap the field for this call only and always restore it.
    original = getattr(module, field)
    object.__setattr__(module, field, quantized_primitive)
    try:
      y = next_fun(*args, **kwargs)
    finally:
      object.__setattr__(module, field, original)
    if lq.bias is not None and module.use_bias:
      bias = module.get_variable("params", "bias")  # [C_out], added along the last axis
      qbias = _quantize_operand(module, lq.bias, bias, "bias", training)[0]
      y = y + (qbias - bias).astype(y.dtype)
    if lq.output is not None:
      y = _quantize_operand(module, lq.output, y, "output", training)[0]
    return y

  return interceptor


@contextlib.contextmanager
def quantize(plan: QuantPlan | None, *, training: bool):
  """Context manager applying `plan` to every model called inside it (no-op for an empty plan)."""
  if not plan:
    yield
    return
  with nn.intercept_methods(make_interceptor(plan, training=training)):
    yield


def quantized_apply(model: nn.Module, plan: QuantPlan | None, *,
                    training: bool | None) -> Callable:
  """`model.apply` with `plan` applied; call it inside the jitted function.

  Args:
    model: the Flax module.
    plan: the resolved plan (None: float).
    training: whether quantizers run in training mode (straight-through gradients, running
      ranges updated); None follows the call's `train=` keyword (default False), as
      `TrainState.apply_fn` does.
  """

  def apply(variables: dict[str, Any], *args, **kwargs):
    mode = bool(kwargs.get("train", False)) if training is None else training
    with quantize(plan, training=mode):
      return model.apply(variables, *args, **kwargs)

  return apply


def quantized_init(model: nn.Module, plan: QuantPlan | None) -> Callable:
  """`model.init` with `plan` applied, so quantizer variables are created from real data."""

  def init(rngs, *args, **kwargs):
    with quantize(plan, training=False):
      return model.init(rngs, *args, **kwargs)

  return init


def quantizer_params(model: nn.Module, params: dict[str, Any], *args, **kwargs) -> dict[str, Any]:
  """A pytree like `params` (a quantized model's 'params'): True at the leaves the plan's
  quantizers created (`kernel_scale`, `input_scale`, ...), False at the model's own.

  The quantizers' parameters are what `params` holds beyond `model.init(rngs, *args, **kwargs)`
  (found by shape evaluation only: nothing is computed).
  """
  rngs = {"params": jax.random.key(0), "dropout": jax.random.key(1)}  # as training's init
  own = jax.eval_shape(lambda: model.init(rngs, *args, **kwargs))
  own = traverse_util.flatten_dict(own.get("params", {}))
  flat = traverse_util.flatten_dict(params)
  return traverse_util.unflatten_dict({k: k not in own for k in flat})
