"""Lowering a trained, quantized model to the integer graph, from what the model computes.

`trace.trace` turns the model's forward pass into a flat list of ops: one per nn.Conv, nn.Dense
and nn.BatchNorm call (its module path, the input it read, strides and padding as called) and the
jax primitives between them. This module walks that list in order with the Builder's integer ops;
no model's structure is written down here, so any flax.linen model built from Conv, Dense,
BatchNorm, ReLU, max/average pooling, residual adds and reshapes lowers the same way. The
quantizers come from the run's QuantPlan (the same one the quantizing interceptor applies) and
their trained variables (`kernel_*`, `input_*`, `bias_*`, `output_*` beside each layer's kernel).

The primitives between layers and what they become:

- `max(x, 0)`: ReLU; `reduce_window_max` (unpadded): max-pool; `reduce_max` over H, W: global
  max-pool; `reduce_sum` over H, W, or a `reduce_window_sum` covering the whole map: the integer
  sum (`sumpool`), and a `div` / `mul` by a positive constant goes into the scale (so `jnp.mean`
  and a global `nn.avg_pool` are the global average pool); `reshape` [B, H, W, C] -> [B, HWC]:
  flatten; `add` of two tensors: the residual add, the branch with fewer conv/dense layers since
  the image (the shortcut) rescaled to the other's scale. Anything else is a one-line ValueError
  naming the op, the module it runs in and the layer before it.

BatchNorm: where it follows the conv's raw accumulator (conv -> BN -> ReLU) it is folded into that
conv: the weight codes stay the trained ones and γ/σ goes into the per-channel scale (a negative
γ/σ flips the channel's sign), the shift into the int32 bias. For per-output-channel weight grids
this is exactly quantizing the folded weights (the folded grid is the old one times |γ/σ|); for
per-tensor grids it keeps the codes the fake-quant model used, so emulation and fake-quant agree.
Elsewhere (the Sequential net's conv -> ReLU -> BN) it stays pending and becomes an integer
per-channel scale and offset inside the next requantization: onto the input codes of the layer
that consumes it, done at the first op that needs integers (so max-pools run on codes).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from quantjax.export import codes as codes_lib
from quantjax.export import trace as trace_lib
from quantjax.export.graph import Builder, Graph, Tensor
from quantjax.export.trace import Const, LayerCall, Op, Param, Program, Value
from quantjax.intercept.plan import LayerQuant, QuantPlan

# Ops a pending BatchNorm can pass on its way to the layer whose input codes it is requantized to.
_TOWARD_LAYER = ("max", "reduce_window_max", "reduce_max", "reshape", "squeeze",
                 "convert_element_type", "copy", "copy_p")
_IDENTITY = ("convert_element_type", "copy", "copy_p")


class _Lowering:
  """One walk of a traced model's ops with a Builder: jaxpr values -> integer tensors."""

  def __init__(self, program: Program, variables: dict[str, Any], plan: QuantPlan,
               builder: Builder):
    self.program = program
    self.variables = variables
    self.plan = plan
    self.b = builder
    self.tensors: dict[int, Tensor] = {}  # id(Value) -> its integer tensor
    self.depth: dict[int, int] = {}  # id(Value) -> conv/dense layers on the longest path to it
    self.after: dict[int, str] = {}  # id(Value) -> the last layer upstream (for messages)
    self.users: dict[int, list[Op]] = {}
    for op in program.ops:
      for a in op.ins:
        self.users.setdefault(id(a), []).append(op)

  # -- helpers -------------------------------------------------------------------------------

  def _fail(self, op: Op, why: str) -> ValueError:
    where = f" in module {op.where!r}" if op.where else ""
    values = [a for a in op.ins if isinstance(a, Value)]
    after = self.after.get(id(values[0])) if values else None
    after = f" after layer {after!r}" if after else " on the input image"
    return ValueError(f"cannot lower op {op.prim!r}{where}{after}: {why}")

  def _vars_at(self, path: str) -> dict[str, Any]:
    """{'params': ..., 'quant_state': ..., 'batch_stats': ...} of the module at `path`."""
    out = {}
    for collection in ("params", "quant_state", "batch_stats"):
      tree = self.variables.get(collection) or {}
      for part in path.split("/"):
        tree = tree.get(part, {}) if isinstance(tree, dict) else {}
      out[collection] = tree
    return out

  def _quant(self, path: str) -> LayerQuant:
    lq = self.plan.get(path)
    if lq is None or lq.weight is None:
      raise ValueError(f"layer {path!r} has float weights; the integer graph needs every conv and "
                       "dense layer's kernel quantized")
    return lq

  def _input_for(self, path: str, x: Tensor) -> Tensor:
    """x as the layer at `path` consumes it: requantized to its input quantizer, if it has one."""
    lq = self._quant(path)
    if x.consumer == path:  # requantized for this layer already (before a pool)
      return x
    if lq.act is None:
      if x.affine is not None or (x.act is None and x.scale.size != 1):
        raise ValueError(f"layer {path!r} has a float input after a rescale; quantize its input "
                         "(quant.act) to export it")
      return x
    params, state = codes_lib.layer_quantizer_vars(self._vars_at(path), "input")
    x = dataclasses.replace(x, consumer=path)
    return self.b.requant(x, codes_lib.act_codes(lq.act, params, state))

  def _consuming_layer(self, op: Op, value: Value) -> str:
    """The conv/dense layer that alone consumes `value`, through pools, ReLUs and reshapes."""
    while len(users := self.users.get(id(value), [])) == 1:
      user = users[0]
      if user.layer is not None and user.layer.kind in ("conv", "dense"):
        return user.layer.path
      if user.prim not in _TOWARD_LAYER:
        break
      value = user.outs[0]
    raise self._fail(op, "a BatchNorm that cannot fold into a conv must be requantized here, "
                     "but its output reaches no single conv/dense layer")

  def _integers(self, op: Op, value: Value) -> Tensor:
    """The tensor of `value`, a pending BatchNorm requantized onto its consumer's input codes."""
    x = self.tensors[id(value)]
    if x.affine is not None:
      x = self._input_for(self._consuming_layer(op, value), x)
    return x

  # -- ops -----------------------------------------------------------------------------------

  def _layer(self, op: Op, call: LayerCall, x: Tensor) -> Tensor:
    """Input requantization, the conv/dense with int32 bias, and an output quantizer if any."""
    if (call.kind == "conv") != (x.hw is not None):
      raise self._fail(op, f"layer {call.path!r} ({call.kind}) reads a "
                       f"{'[B, C]' if x.hw is None else '[B, H, W, C]'} integer tensor")
    lq = self._quant(call.path)
    x = self._input_for(call.path, x)
    v = self._vars_at(call.path)
    kernel = np.asarray(v["params"]["kernel"])
    params, state = codes_lib.layer_quantizer_vars(v, "kernel")
    wc = codes_lib.weight_codes(lq.weight, kernel, params, state)
    bias = v["params"].get("bias")
    if bias is not None and lq.bias is not None:
      bp, bs = codes_lib.layer_quantizer_vars(v, "bias")
      bias = np.asarray(lq.bias.fake_quant(bias, bp, bs, "weight"))
    y = self.b.layer(call.kind, call.path, x, wc, None if bias is None else np.asarray(bias),
                     call.strides or (1, 1), [list(p) for p in call.padding] or None)
    if lq.output is not None:
      op_, os_ = codes_lib.layer_quantizer_vars(v, "output")
      y = self.b.requant(y, codes_lib.act_codes(lq.output, op_, os_))
    return y

  def _batch_norm(self, call: LayerCall, x: Tensor) -> Tensor:
    v = self._vars_at(call.path)
    if not v["batch_stats"]:
      raise ValueError(f"BatchNorm {call.path!r} has no parameters or statistics in the "
                       "checkpoint")
    channels = x.channels
    params = {"scale": v["params"].get("scale", np.ones(channels)),
              "bias": v["params"].get("bias", np.zeros(channels))}
    return self.b.batch_norm(x, params, v["batch_stats"], eps=call.epsilon)

  def _scalar(self, op: Op, a) -> float:
    values = np.asarray(a.value, np.float64).reshape(-1)
    if not values.size or np.any(values != values[0]):
      raise self._fail(op, "a per-element constant has no integer form (a scalar only)")
    return float(values[0])

  def _reshape(self, op: Op, x: Tensor, shape: tuple[int, ...]) -> Tensor:
    in_shape = op.ins[0].shape
    if shape == in_shape:
      return x
    if len(shape) == 2 and shape[0] == in_shape[0]:
      if x.hw is None and shape[1] == x.channels:  # [B, 1, 1, C] of a pool -> [B, C]
        return x
      if x.hw is not None and shape[1] == x.hw[0] * x.hw[1] * x.channels:
        return self.b.flatten(self._integers(op, op.ins[0]), x.hw[0] * x.hw[1])
    raise self._fail(op, f"reshape {in_shape} -> {shape} is not a flatten of [B, H, W, C]")

  def _window(self, op: Op) -> tuple[tuple[int, int], tuple[int, int]]:
    p = op.params
    dims, strides = tuple(p["window_dimensions"]), tuple(p["window_strides"])
    if (len(dims) != 4 or dims[0] != 1 or dims[3] != 1 or strides[0] != 1 or strides[3] != 1
        or any(lo or hi for lo, hi in p["padding"]) or set(p["base_dilation"]) != {1}
        or set(p["window_dilation"]) != {1}):
      raise self._fail(op, f"only unpadded, undilated 2-D windows over H, W are supported (got "
                       f"window {dims}, strides {strides}, padding {tuple(p['padding'])})")
    return dims[1:3], strides[1:3]

  def _op(self, op: Op) -> Tensor:
    """The integer tensor of `op`'s (single) output."""
    params = [a for a in op.ins if isinstance(a, Param)]
    if params:
      raise self._fail(op, f"it reads the model variable {params[0].name!r} outside a "
                       "Conv/Dense/BatchNorm layer")
    values = [a for a in op.ins if isinstance(a, Value)]
    consts = [a for a in op.ins if isinstance(a, Const)]
    if len(op.outs) != 1:
      raise self._fail(op, "an op with several outputs")
    x = self.tensors[id(values[0])]
    prim = op.prim
    if op.layer is not None:
      if op.layer.kind == "batch_norm":
        return self._batch_norm(op.layer, x)
      return self._layer(op, op.layer, x)
    if prim in _IDENTITY:
      if prim == "convert_element_type" and np.dtype(op.params["new_dtype"]) not in (
          np.float32, np.float64):
        raise self._fail(op, f"a cast to {np.dtype(op.params['new_dtype'])}")
      return x
    if prim == "max" and len(values) == 1 and consts and self._scalar(op, consts[0]) == 0.0:
      return self.b.relu(self._integers(op, values[0]))
    if prim == "reduce_window_max":
      window, strides = self._window(op)
      return self.b.maxpool(self._integers(op, values[0]), window, strides)
    spatial = len(op.ins[0].shape) == 4 and tuple(op.params.get("axes", ())) == (1, 2)
    if prim == "reduce_max" and spatial:
      return self.b.maxpool(self._integers(op, values[0]))
    if prim == "reduce_sum" and spatial:
      return self.b.sumpool(x)
    if prim == "reduce_window_sum":
      window, strides = self._window(op)
      if x.hw is None or tuple(window) != tuple(x.hw):
        raise self._fail(op, f"an average pool with window {window} over a {x.hw} map; the "
                         "integer graph has the global average pool only")
      return self.b.sumpool(x)
    if prim in ("mul", "div") and len(values) == 1 and len(consts) == 1:
      c = self._scalar(op, consts[0])
      if prim == "div" and op.ins[0] is values[0]:
        return self.b.rescale(x, 1.0, c)
      if prim == "mul":
        return self.b.rescale(x, c)
    if prim == "add" and len(values) == 2:
      # The shortcut is the branch with fewer layers since the image; it is rescaled.
      a, b = sorted(values, key=lambda v: -self.depth[id(v)])
      return self.b.add(self.tensors[id(a)], self.tensors[id(b)])
    if prim in ("reshape", "squeeze"):
      return self._reshape(op, x, op.outs[0].shape)
    raise self._fail(op, "it has no integer form (supported between layers: ReLU, max/average "
                     "pool, residual add, flatten)")

  def run(self, image: Tensor) -> Tensor:
    """The integer tensor of the model's output."""
    self.tensors[id(self.program.image)] = image
    self.depth[id(self.program.image)] = 0
    for op in self.program.ops:
      try:
        y = self._op(op)
      except ValueError as e:  # a Builder's message, which does not know where it is
        if op.layer is not None or str(e).startswith("cannot lower"):
          raise
        raise self._fail(op, str(e)) from None
      out = op.outs[0]
      ins = [id(a) for a in op.ins if isinstance(a, Value)]
      self.tensors[id(out)] = y
      is_layer = op.layer is not None and op.layer.kind != "batch_norm"
      self.depth[id(out)] = max(self.depth[i] for i in ins) + int(is_layer)
      self.after[id(out)] = op.layer.path if op.layer else self.after.get(ins[0])
    output = self.program.output
    if not isinstance(output, Value) or id(output) not in self.tensors:
      raise ValueError("the model's output does not depend on the image")
    return self.tensors[id(output)]


def lower(model_name: str, model, variables: dict[str, Any], plan: QuantPlan,
          image_shape: tuple[int, int, int], mean, std, *, mult_bits: int = 31,
          input_frac_bits: int = 4, meta: dict[str, Any] | None = None,
          call_kwargs: dict[str, Any] | None = None) -> Graph:
  """The integer graph of a flax.linen `model` with `variables` quantized by `plan`.

  Args:
    model_name: the model's name, recorded in the graph's meta (any string; no registry needed).
    model: the unbound model, called as `model.apply(variables, x, **call_kwargs)`.
    variables: its trained variables (params, batch_stats, quant_state), NumPy or jax arrays.
    plan: the QuantPlan the run trained with.
    image_shape: [H, W, C] of one input image.
    mean: per-channel mean of the input normalisation.
    std: per-channel standard deviation of the input normalisation.
    mult_bits: width of the requantization multipliers.
    input_frac_bits: fractional bits of the normalised image below the pixel step.
    meta: extra entries of the graph's meta.
    call_kwargs: keyword arguments of the model call; default `{'train': False}`.

  Returns:
    The Graph. Raises ValueError (one line) for an op or layer the graph cannot express (naming
    it), a float layer, or a quantizer with no integer form.
  """
  if not plan:
    raise ValueError("the run is not quantized (empty plan); nothing to export as integers")
  program = trace_lib.trace(model, variables, image_shape, call_kwargs)
  b = Builder(mult_bits=mult_bits, input_frac_bits=input_frac_bits)
  x = b.image(tuple(image_shape), mean, std)
  logits = _Lowering(program, variables, plan, b).run(x)
  out, scale = b.logits(logits)
  return b.finish(out, scale, {"model": model_name, "image_shape": list(image_shape),
                               "num_classes": int(out.channels), **(meta or {})})
