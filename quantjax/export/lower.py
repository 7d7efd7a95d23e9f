"""Lowering a trained, quantized model to the integer graph: one walker per model family.

Each walker replays its model's `__call__` (quantjax.models) with the Builder's integer ops, in the
same order and with the same shapes. The quantizers come from the run's QuantPlan and their
trained variables (`kernel_*`, `input_*`, `bias_*`, `output_*` beside each layer's kernel).

BatchNorm: where it follows the conv (ResNet, VGG: conv -> BN -> ReLU) it is folded into that
conv: the weight codes stay the trained ones and γ/σ goes into the per-channel scale (a negative
γ/σ flips the channel's sign), the shift into the int32 bias. For per-output-channel weight grids
this is exactly quantizing the folded weights (the folded grid is the old one times |γ/σ|); for
per-tensor grids it keeps the codes the fake-quant model used, so emulation and fake-quant agree.
Where BN follows ReLU (the Sequential net: conv -> ReLU -> BN) it cannot move into the conv; it
becomes an integer per-channel scale and offset inside the next requantization.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import numpy as np

from quantjax.export import codes as codes_lib
from quantjax.export.graph import Builder, Graph, Tensor
from quantjax.intercept.plan import LayerQuant, QuantPlan

_WALKERS: dict[str, Callable] = {}


def _walker(*names: str):
  def wrap(fn):
    for name in names:
      _WALKERS[name] = fn
    return fn
  return wrap


def exportable_models() -> list[str]:
  return sorted(_WALKERS)


class Lowering:
  """A model's variables and plan, and the helpers the walkers call."""

  def __init__(self, variables: dict[str, Any], plan: QuantPlan, builder: Builder):
    self.variables = variables
    self.plan = plan
    self.b = builder

  def vars_at(self, path: str) -> dict[str, Any]:
    """{'params': ..., 'quant_state': ..., 'batch_stats': ...} of the module at `path`."""
    out = {}
    for collection in ("params", "quant_state", "batch_stats"):
      tree = self.variables.get(collection) or {}
      for part in path.split("/"):
        tree = tree.get(part, {}) if isinstance(tree, dict) else {}
      out[collection] = tree
    return out

  def quant(self, path: str) -> LayerQuant:
    lq = self.plan.get(path)
    if lq is None or lq.weight is None:
      raise ValueError(f"layer {path!r} has float weights; the integer graph needs every conv and "
                       "dense layer's kernel quantized")
    return lq

  def input_for(self, path: str, x: Tensor) -> Tensor:
    """x as the layer at `path` consumes it: requantized to its input quantizer, if it has one."""
    lq = self.quant(path)
    if x.consumer == path:  # the walker requantized it for this layer already (before a pool)
      return x
    if lq.act is None:
      if x.affine is not None or (x.act is None and x.scale.size != 1):
        raise ValueError(f"layer {path!r} has a float input after a rescale; quantize its input "
                         "(quant.act) to export it")
      return x
    params, state = codes_lib.layer_quantizer_vars(self.vars_at(path), "input")
    x = dataclasses.replace(x, consumer=path)
    return self.b.requant(x, codes_lib.act_codes(lq.act, params, state))

  def layer(self, path: str, x: Tensor, op: str = "conv", strides=(1, 1),
            padding: Any = "SAME") -> Tensor:
    """Input requantization, the conv/dense with int32 bias, and an output quantizer if any."""
    lq = self.quant(path)
    x = self.input_for(path, x)
    v = self.vars_at(path)
    kernel = np.asarray(v["params"]["kernel"])
    params, state = codes_lib.layer_quantizer_vars(v, "kernel")
    wc = codes_lib.weight_codes(lq.weight, kernel, params, state)
    bias = v["params"].get("bias")
    bias_q = getattr(lq, "bias", None)
    if bias is not None and bias_q is not None:
      bp, bs = codes_lib.layer_quantizer_vars(v, "bias")
      bias = np.asarray(bias_q.apply(np.asarray(bias, np.float32), bp, bs, "weight", False)[0])
    y = self.b.layer(op, path, x, wc, None if bias is None else np.asarray(bias), strides, padding)
    self.float_bias = None if bias is None else np.asarray(bias, np.float64)
    out_q = getattr(lq, "output", None)
    if out_q is not None:
      op_, os_ = codes_lib.layer_quantizer_vars(v, "output")
      y = self.b.requant(y, codes_lib.act_codes(out_q, op_, os_))
    return y

  def batch_norm(self, path: str, x: Tensor) -> Tensor:
    v = self.vars_at(path)
    if not v["params"] or not v["batch_stats"]:
      raise ValueError(f"BatchNorm {path!r} has no parameters or statistics in the checkpoint")
    # The conv's float bias is re-derived through the fold (folding needs it unrounded).
    bias = self.float_bias if x.producer is not None else None
    return self.b.batch_norm(x, v["params"], v["batch_stats"], float_bias=bias)


@_walker("lenet5")
def _lenet5(low: Lowering, x: Tensor, model) -> Tensor:
  padding = "SAME" if x.hw[0] < 32 else "VALID"
  x = low.b.relu(low.layer("conv1", x, padding=padding))
  x = low.b.maxpool(x, (2, 2), (2, 2))
  x = low.b.relu(low.layer("conv2", x, padding="VALID"))
  x = low.b.maxpool(x, (2, 2), (2, 2))
  x = low.b.flatten(x, x.hw[0] * x.hw[1])
  x = low.b.relu(low.layer("fc1", x, "dense"))
  x = low.b.relu(low.layer("fc2", x, "dense"))
  return low.layer("fc3", x, "dense")


@_walker("sequential")
def _sequential(low: Lowering, x: Tensor, model) -> Tensor:
  convs = [f"conv{s}_{j}" for s in range(1, model.num_stages + 1) for j in (1, 2)]
  consumers = dict(zip(convs, convs[1:] + ["head"], strict=True))
  for stage in range(1, model.num_stages + 1):
    for j in (1, 2):
      name = f"conv{stage}_{j}"
      x = low.b.relu(low.layer(name, x))
      x = low.batch_norm(f"bn{stage}_{j}", x)
      # ReLU then BN: BN becomes the integer scale and offset of the next layer's requantization,
      # done here so that the max-pools run on codes.
      x = low.input_for(consumers[name], x)
    if stage % 2 == 0 and stage < model.num_stages and min(x.hw) >= 2:
      x = low.b.maxpool(x, (2, 2), (2, 2))
  x = low.b.maxpool(x)  # global max-pool
  return low.layer("head", x, "dense")


def _conv_bn(low: Lowering, conv: str, bn: str, x: Tensor, strides=(1, 1), padding="SAME"):
  return low.batch_norm(bn, low.layer(conv, x, strides=strides, padding=padding))


@_walker("resnet20", "resnet18")
def _resnet(low: Lowering, x: Tensor, model) -> Tensor:
  x = low.b.relu(_conv_bn(low, "stem_conv", "stem_bn", x))
  for s, (blocks, features) in enumerate(zip(model.stage_sizes, model.stage_features,
                                             strict=True)):
    for blk in range(blocks):
      strides = (2, 2) if s > 0 and blk == 0 else (1, 1)
      p = f"stage{s + 1}_block{blk}"
      y = low.b.relu(_conv_bn(low, f"{p}/conv1", f"{p}/bn1", x, strides))
      y = _conv_bn(low, f"{p}/conv2", f"{p}/bn2", y)
      if x.channels != features or strides != (1, 1):
        x = _conv_bn(low, f"{p}/shortcut_conv", f"{p}/shortcut_bn", x, strides, "VALID")
      x = low.b.relu(low.b.add(y, x))
  count = x.hw[0] * x.hw[1]
  x = low.b.global_avgpool(x, count)
  return low.layer("head", x, "dense")


@_walker("vgg_small")
def _vgg_small(low: Lowering, x: Tensor, model) -> Tensor:
  from quantjax.models.vgg import _LAYOUT  # the model's own layout, so the two cannot drift

  i = 0
  for item in _LAYOUT:
    if item == "M":
      x = low.b.maxpool(x, (2, 2), (2, 2))
      continue
    i += 1
    x = low.b.relu(_conv_bn(low, f"conv{i}", f"bn{i}", x))
  x = low.b.global_avgpool(x, x.hw[0] * x.hw[1])
  return low.layer("head", x, "dense")


def lower(model_name: str, model, variables: dict[str, Any], plan: QuantPlan,
          image_shape: tuple[int, int, int], mean, std, *, mult_bits: int = 31,
          input_frac_bits: int = 4, meta: dict[str, Any] | None = None) -> Graph:
  """The integer graph of `model` (a registered model) with `variables` quantized by `plan`.

  Raises ValueError (one line) for a model without a walker, a float layer, or a quantizer with
  no integer form.
  """
  if model_name not in _WALKERS:
    raise ValueError(f"model {model_name!r} has no integer export; exportable models: "
                     f"{', '.join(exportable_models())}")
  if not plan:
    raise ValueError("the run is not quantized (empty plan); nothing to export as integers")
  b = Builder(mult_bits=mult_bits, input_frac_bits=input_frac_bits)
  low = Lowering(variables, plan, b)
  x = b.image(tuple(image_shape), mean, std)
  logits = _WALKERS[model_name](low, x, model)
  out, scale = b.logits(logits)
  return b.finish(out, scale, {"model": model_name, "image_shape": list(image_shape),
                               "num_classes": int(out.channels), **(meta or {})})
