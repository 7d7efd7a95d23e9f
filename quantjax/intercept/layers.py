"""Discovery of a model's quantizable layers (nn.Conv and nn.Dense), in call order."""

from __future__ import annotations

import dataclasses
import math

import flax.linen as nn
import jax
import jax.numpy as jnp

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


def module_path(module: nn.Module) -> str:
  """'/'-joined path of a bound module, the string rules' regexes match against."""
  return "/".join(str(p) for p in module.scope.path)


def discover_layers(model: nn.Module, sample: jax.Array, **call_kwargs) -> list[LayerInfo]:
  """Lists the model's Conv/Dense layers in the order a forward pass calls them.

  Runs `model.init` abstractly (`jax.eval_shape`), so it costs no FLOPs.
  """
  found: dict[str, LayerInfo] = {}

  def record(next_fun, args, kwargs, context):
    out = next_fun(*args, **kwargs)
    module = context.module
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

  def init():
    with nn.intercept_methods(record):
      return model.init(
          {"params": jax.random.key(0), "dropout": jax.random.key(1)}, sample, **call_kwargs
      )

  jax.eval_shape(init)
  if not found:
    raise ValueError(f"model {type(model).__name__} has no nn.Conv or nn.Dense layer to quantize")
  return list(found.values())


def sample_input(image_shape: tuple[int, ...], batch: int = 2) -> jax.Array:
  """A zero batch `[batch, *image_shape]` for discovery and initialisation shapes."""
  return jnp.zeros((batch, *image_shape), jnp.float32)
