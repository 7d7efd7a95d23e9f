"""Applies a QuantPlan to an unmodified flax.linen model through a method interceptor.

Every nn.Conv calls `quantjax.intercept.conv`'s convolution (jax.lax's forward; a kernel gradient
a CPU computes fast). For each nn.Conv / nn.Dense in the plan, the interceptor swaps a quantizing
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

from quantjax.intercept import conv, integer
from quantjax.intercept.layers import QUANTIZABLE, call_with_product, module_path, product_field
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


def make_interceptor(plan: QuantPlan | None, *, training: bool,
                     conv_kernel_grad: str = "auto") -> Callable:
  """The `nn.intercept_methods` interceptor that applies `plan` (None: no quantizer).

  Every nn.Conv without a primitive of its own, quantized or not, calls
  `quantjax.intercept.conv.conv_general_dilated` with `conv_kernel_grad` (its forward is
  jax.lax's; its kernel gradient can be computed tap by tap, see there).
  """
  layer_quant = plan.as_dict() if plan else {}
  conv_primitive = conv.primitive(conv_kernel_grad)

  def interceptor(next_fun, args, kwargs, context):
    module = context.module
    if context.method_name != "__call__" or not isinstance(module, QUANTIZABLE):
      return next_fun(*args, **kwargs)
    is_conv = isinstance(module, nn.Conv)
    field = product_field(module)
    # A module's own primitive (its `conv_general_dilated` / `dot_general` field) keeps the float
    # operands it was written for; only jax.lax's (or the project's conv) takes the integers.
    own = getattr(module, field) is not None
    lq = layer_quant.get(module_path(module))
    if lq is None:
      if own or not is_conv:
        return next_fun(*args, **kwargs)
      return call_with_product(module, conv_primitive, next_fun, args, kwargs)
    primitive = getattr(module, field) or (conv_primitive if is_conv else jax.lax.dot_general)

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

    y = call_with_product(module, quantized_primitive, next_fun, args, kwargs)
    if lq.bias is not None and module.use_bias:
      bias = module.get_variable("params", "bias")  # [C_out], added along the last axis
      qbias = _quantize_operand(module, lq.bias, bias, "bias", training)[0]
      y = y + (qbias - bias).astype(y.dtype)
    if lq.output is not None:
      y = _quantize_operand(module, lq.output, y, "output", training)[0]
    return y

  return interceptor


@contextlib.contextmanager
def quantize(plan: QuantPlan | None, *, training: bool, conv_kernel_grad: str = "auto"):
  """Context manager applying `plan` to every model called inside it, and the project's conv
  (`conv_kernel_grad`) to its convolutions; a no-op for an empty plan with 'xla'."""
  if not plan and conv.check_kernel_grad(conv_kernel_grad) == "xla":
    yield
    return
  with nn.intercept_methods(make_interceptor(plan, training=training,
                                             conv_kernel_grad=conv_kernel_grad)):
    yield


def quantized_apply(model: nn.Module, plan: QuantPlan | None, *,
                    training: bool | None, conv_kernel_grad: str = "auto") -> Callable:
  """`model.apply` with `plan` applied; call it inside the jitted function.

  Args:
    model: the Flax module.
    plan: the resolved plan (None: float).
    training: whether quantizers run in training mode (straight-through gradients, running
      ranges updated); None follows the call's `train=` keyword (default False), as
      `TrainState.apply_fn` does.
    conv_kernel_grad: how the convolutions' kernel gradient is computed
      (`quantjax.intercept.conv`); the forward is the same with any.
  """
  conv.check_kernel_grad(conv_kernel_grad)

  def apply(variables: dict[str, Any], *args, **kwargs):
    mode = bool(kwargs.get("train", False)) if training is None else training
    with quantize(plan, training=mode, conv_kernel_grad=conv_kernel_grad):
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
