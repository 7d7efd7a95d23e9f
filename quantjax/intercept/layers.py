"""Discovery of a model's quantizable layers (nn.Conv and nn.Dense), in call order.

Every other layer that owns parameters (nn.DenseGeneral, nn.Embed, nn.BatchNorm, a user's own
layer with a kernel) stays in float; `discover_float_layers` lists them with the reason, and
`discover_layers` logs the ones with a kernel, so none is left float silently.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
from absl import logging

QUANTIZABLE = (nn.Conv, nn.Dense)


@dataclasses.dataclass(frozen=True)
class LayerInfo:
  """One Conv or Dense layer as the model calls it."""

  path: str  # module path joined by '/', e.g. 'stage1_block0/conv1'
  kind: str  # 'conv' or 'dense'
  kernel_shape: tuple[int, ...]  # [KH, KW, Cin, Cout] or [Cin, Cout]
  input_shape: tuple[int, ...]  # [B, H, W, Cin] or [B, Cin] for the sample batch
  output_shape: tuple[int, ...]  # [B, Ho, Wo, Cout] or [B, Cout]
  has_bias: bool

  @property
  def num_weights(self) -> int:
    return math.prod(self.kernel_shape)

  @property
  def num_bias(self) -> int:
    return self.kernel_shape[-1] if self.has_bias else 0

  @property
  def macs(self) -> int:
    """Multiply-adds per example: every weight once per output position (H_out·W_out for a
    conv, 1 for a dense layer)."""
    return self.num_weights * math.prod(self.output_shape[1:-1])


@dataclasses.dataclass(frozen=True)
class FloatLayer:
  """A layer with parameters that no quantizer applies to."""

  path: str  # module path joined by '/'
  kind: str  # its class, e.g. 'DenseGeneral'
  reason: str  # why it stays float


def _float_reason(module: nn.Module, own: dict) -> str:
  kind = type(module).__name__
  if isinstance(module, (nn.BatchNorm, nn.LayerNorm, nn.GroupNorm, nn.RMSNorm)):
    return f"nn.{kind}: normalisation stays float (folded on export where it follows a Conv/Dense)"
  if "kernel" in own:
    return (f"{kind} has a kernel but is not nn.Conv or nn.Dense, the layers quantjax quantizes "
            "(intercept.layers.QUANTIZABLE): its matmul runs in float")
  return f"{kind} owns parameters ({', '.join(sorted(own))}) but is no Conv/Dense layer"


def module_path(module: nn.Module) -> str:
  """'/'-joined path of a bound module, the string rules' regexes match against."""
  return "/".join(str(p) for p in module.scope.path)


def product_field(module: nn.Module) -> str:
  """The field of a Conv / Dense module that holds its product primitive (None: jax.lax's)."""
  return "conv_general_dilated" if isinstance(module, nn.Conv) else "dot_general"


def call_with_product(module: nn.Module, primitive: Callable, next_fun, args, kwargs):
  """`next_fun(*args, **kwargs)` with the Conv / Dense module's product primitive
  (`product_field`) set to `primitive`. Modules are frozen dataclasses: the field is swapped
  for this call only and always restored."""
  field = product_field(module)
  original = getattr(module, field)
  object.__setattr__(module, field, primitive)
  try:
    return next_fun(*args, **kwargs)
  finally:
    object.__setattr__(module, field, original)


def discover_layers(model: nn.Module, sample: jax.Array, **call_kwargs) -> list[LayerInfo]:
  """Lists the model's Conv/Dense layers in the order a forward pass calls them.

  Runs `model.init` abstractly (`jax.eval_shape`), so it costs no FLOPs.
  """
  found, _ = _discover(model, sample, **call_kwargs)
  return found


def discover_float_layers(model: nn.Module, sample: jax.Array, **call_kwargs) -> list[FloatLayer]:
  """The layers with parameters that stay float (not nn.Conv / nn.Dense), with the reason."""
  return _discover(model, sample, **call_kwargs)[1]


def _discover(model, sample, **call_kwargs) -> tuple[list[LayerInfo], list[FloatLayer]]:
  found: dict[str, LayerInfo] = {}
  left_float: dict[str, FloatLayer] = {}

  def record(next_fun, args, kwargs, context):
    out = next_fun(*args, **kwargs)
    module = context.module
    if context.method_name == "__call__" and not isinstance(module, QUANTIZABLE):
      path = module_path(module)
      own = {k: v for k, v in (module.variables.get("params") or {}).items()
             if not isinstance(v, Mapping)}  # its own, not its children's
      if own and path not in left_float:
        left_float[path] = FloatLayer(path, type(module).__name__, _float_reason(module, own))
    if context.method_name == "__call__" and isinstance(module, QUANTIZABLE):
      path = module_path(module)
      if path not in found:
        kernel = module.get_variable("params", "kernel")
        found[path] = LayerInfo(
            path=path,
            kind="conv" if isinstance(module, nn.Conv) else "dense",
            kernel_shape=tuple(kernel.shape),
            input_shape=tuple(args[0].shape),
            output_shape=tuple(out.shape),
            has_bias=bool(module.use_bias),
        )
    return out

  def init(sample):
    with nn.intercept_methods(record):
      return model.init(
          {"params": jax.random.key(0), "dropout": jax.random.key(1)}, sample, **call_kwargs
      )

  jax.eval_shape(init, sample)  # a traced argument: a ShapeDtypeStruct sample starts no backend
  if not found:
    raise ValueError(f"model {type(model).__name__} has no nn.Conv or nn.Dense layer to quantize")
  for layer in left_float.values():
    if "kernel" in layer.reason:
      logging.warning("layer %s (%s) stays float: %s", layer.path, layer.kind, layer.reason)
  return list(found.values()), list(left_float.values())


def sample_input(image_shape: tuple[int, ...], batch: int = 2) -> jax.ShapeDtypeStruct:
  """The shape of a float32 batch `[batch, *image_shape]`, for discovery: abstract, so finding
  the layers allocates nothing and starts no JAX backend (a CPU host may still choose its device
  count afterwards, `quantjax.train.sharding.cpu_devices_for_training`)."""
  return jax.ShapeDtypeStruct((batch, *image_shape), jnp.float32)
