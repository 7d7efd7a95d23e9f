"""What a flax.linen model computes, as a flat list of ops for the integer lowering to read.

The model is traced to a jaxpr (`jax.make_jaxpr` of `model.apply` at the export's image shape)
under a Flax method interceptor. Each nn.Conv, nn.Dense and nn.BatchNorm call becomes one opaque
`quantjax_layer` equation carrying a `LayerCall`: the module path, its input and output shapes
and, for a conv, the strides and explicit padding of the `conv_general_dilated` call the module
really made (recorded by swapping the module's `conv_general_dilated`, as the quantizing
interceptor does). Everything between layers stays as jax primitives: `max` with 0 (ReLU),
`reduce_window_max` (max-pool), `reduce_window_sum` / `reduce_sum` and `div` (average pool),
`reduce_max` (global max-pool), `add` (residual), `reshape` (flatten).

The jaxpr is then flattened: calls (`jit`, `custom_jvp_call`, ...) are inlined, operations on
constants alone are evaluated, and operations the output does not depend on are dropped (the
layers' own arithmetic, which the interceptor traced and then replaced by the opaque equation).
The model's variables are traced as `Param` inputs, so an op that reads a parameter outside a
Conv/Dense/BatchNorm is visible as such.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.extend.core import Primitive

from quantjax.intercept.layers import call_with_product, module_path, product_field

# The NHWC / HWIO / NHWC convolution layout flax's nn.Conv uses for 2-D inputs.
_NHWC = jax.lax.ConvDimensionNumbers(lhs_spec=(0, 3, 1, 2), rhs_spec=(3, 2, 0, 1),
                                     out_spec=(0, 3, 1, 2))
_CONV_SIGNATURE = inspect.signature(jax.lax.conv_general_dilated)


@dataclasses.dataclass(frozen=True)
class LayerCall:
  """One call of an nn.Conv, nn.Dense or nn.BatchNorm, as the model made it."""

  path: str  # module path joined by '/', e.g. 'stage1_block0/conv1'
  kind: str  # 'conv', 'dense' or 'batch_norm'
  input_shape: tuple[int, ...]  # [B, H, W, C] or [B, C]
  output_shape: tuple[int, ...]
  strides: tuple[int, ...] = ()  # conv: (sh, sw)
  padding: tuple[tuple[int, int], ...] = ()  # conv: ((top, bottom), (left, right))
  epsilon: float = 0.0  # batch_norm


@dataclasses.dataclass(frozen=True, eq=False)
class Value:
  """A traced array the lowering gives an integer tensor (compared by identity)."""

  shape: tuple[int, ...]


@dataclasses.dataclass(frozen=True, eq=False)
class Const:
  """A value known at trace time (a literal, or an op on literals evaluated)."""

  value: np.ndarray


@dataclasses.dataclass(frozen=True, eq=False)
class Param:
  """One of the model's variables, e.g. 'params/conv1/kernel'."""

  name: str
  shape: tuple[int, ...]


Atom = Value | Const | Param


@dataclasses.dataclass(frozen=True)
class Op:
  """One operation of the flattened trace: `prim` (a jax primitive, or 'layer') on `ins`."""

  prim: str
  params: Mapping[str, Any]
  ins: tuple[Atom, ...]
  outs: tuple[Value, ...]
  where: str  # the flax module the op runs in ('' for the model's top level)
  layer: LayerCall | None = None  # set when prim == 'layer'


@dataclasses.dataclass
class Program:
  """The model's computation from the image to the logits, in call order."""

  image: Value
  output: Atom
  ops: list[Op]


_LAYER = Primitive("quantjax_layer")
_LAYER.def_abstract_eval(
    lambda x, *, call: jax.core.ShapedArray(call.output_shape, x.dtype))


def _conv_call(path: str, module: nn.Conv, x, lhs, rhs, args, kwargs, out) -> LayerCall:
  """The LayerCall of a conv from the arguments its `conv_general_dilated` received."""
  bound = _CONV_SIGNATURE.bind(lhs, rhs, *args, **kwargs).arguments
  problem = None
  if lhs.ndim != 4:
    problem = f"a {lhs.ndim - 2}-D convolution (the integer graph has 2-D ones)"
  elif tuple(lhs.shape) != tuple(x.shape):
    problem = f"padding mode {module.padding!r} (the graph pads with zeros)"
  elif module.mask is not None:
    problem = "a kernel mask"
  elif any(d != 1 for d in (bound.get("lhs_dilation") or (1,))):
    problem = "input dilation"
  elif any(d != 1 for d in (bound.get("rhs_dilation") or (1,))):
    problem = "kernel dilation"
  elif bound.get("feature_group_count", 1) != 1 or bound.get("batch_group_count", 1) != 1:
    problem = "grouped convolution"
  elif jax.lax.conv_dimension_numbers(lhs.shape, rhs.shape,
                                      bound.get("dimension_numbers")) != _NHWC:
    problem = "a layout other than NHWC/HWIO"
  if problem:
    raise ValueError(f"layer {path!r} uses {problem}; the integer graph cannot express it")
  strides = tuple(int(s) for s in bound["window_strides"])
  padding = bound["padding"]
  if isinstance(padding, str):
    padding = jax.lax.padtype_to_pads(lhs.shape[1:3], rhs.shape[:2], strides, padding)
  padding = tuple((int(lo), int(hi)) for lo, hi in padding)
  return LayerCall(path, "conv", tuple(x.shape), tuple(out.shape), strides, padding)


def _record(next_fun, args, kwargs, context):
  """Interceptor: a Conv/Dense/BatchNorm call becomes one opaque `quantjax_layer` equation."""
  module = context.module
  if context.method_name != "__call__" or not isinstance(module,
                                                         (nn.Conv, nn.Dense, nn.BatchNorm)):
    return next_fun(*args, **kwargs)
  path = module_path(module)
  x = args[0]
  if isinstance(module, nn.BatchNorm):
    running = args[1] if len(args) > 1 else kwargs.get("use_running_average")
    running = module.use_running_average if running is None else running
    if not running:
      raise ValueError(f"BatchNorm {path!r} normalises with batch statistics; export traces the "
                       "model in inference mode (use_running_average=True)")
    if module.axis not in (-1, x.ndim - 1) or kwargs.get("mask") is not None:
      raise ValueError(f"BatchNorm {path!r} normalises over other axes than the channels")
    out = next_fun(*args, **kwargs)
    call = LayerCall(path, "batch_norm", tuple(x.shape), tuple(out.shape),
                     epsilon=float(module.epsilon))
    return _LAYER.bind(x, call=call)

  field = product_field(module)
  primitive = getattr(module, field) or getattr(jax.lax, field)
  seen = []

  def recording(lhs, rhs, *a, **kw):
    seen.append((lhs, rhs, a, kw))
    return primitive(lhs, rhs, *a, **kw)

  out = call_with_product(module, recording, next_fun, args, kwargs)
  if len(seen) != 1:
    raise ValueError(f"layer {path!r} made {len(seen)} {field} calls; expected one")
  lhs, rhs, a, kw = seen[0]
  if isinstance(module, nn.Conv):
    call = _conv_call(path, module, x, lhs, rhs, a, kw, out)
  else:
    if x.ndim != 2:
      raise ValueError(f"layer {path!r} is a Dense on a {x.ndim}-D input; the integer graph's "
                       "dense layers take [B, C] (flatten or pool first)")
    call = LayerCall(path, "dense", tuple(x.shape), tuple(out.shape))
  return _LAYER.bind(x, call=call)


_SUB_JAXPR = ("jaxpr", "call_jaxpr", "fun_jaxpr")  # where call-like primitives keep their body


def _sub_jaxpr(eqn):
  if eqn.primitive is _LAYER:
    return None
  for key in _SUB_JAXPR:
    sub = eqn.params.get(key)
    if isinstance(sub, jax.extend.core.ClosedJaxpr):
      return sub.jaxpr, sub.consts
    if isinstance(sub, jax.extend.core.Jaxpr):
      return sub, ()
  return None


def _where(name_stack: str, prefix: str) -> str:
  parts = [p for p in (prefix + "/" + name_stack).split("/") if p]
  return "/".join(parts)


def _flatten(jaxpr, consts, args: Sequence[Atom], ops: list[Op], prefix: str) -> list[Atom]:
  """Appends `jaxpr`'s equations to `ops` (calls inlined, constants folded); its outputs."""
  env: dict[Any, Atom] = {}

  def read(v) -> Atom:
    if isinstance(v, jax.extend.core.Literal):
      return Const(np.asarray(v.val))
    return env[v]

  for v, c in zip(jaxpr.constvars, consts, strict=True):
    env[v] = Const(np.asarray(c))
  for v, a in zip(jaxpr.invars, args, strict=True):
    env[v] = a
  for eqn in jaxpr.eqns:
    ins = [read(v) for v in eqn.invars]
    where = _where(str(eqn.source_info.name_stack), prefix)
    sub = _sub_jaxpr(eqn)
    if sub is not None:
      outs = _flatten(*sub, ins[len(ins) - len(sub[0].invars):], ops, where)
    elif ins and all(isinstance(a, Const) for a in ins):
      result = eqn.primitive.bind(*(jnp.asarray(a.value) for a in ins), **eqn.params)
      results = result if eqn.primitive.multiple_results else [result]
      outs = [Const(np.asarray(r)) for r in results]
    else:
      outs = [Value(tuple(v.aval.shape)) for v in eqn.outvars]
      layer = eqn.params["call"] if eqn.primitive is _LAYER else None
      params = {} if layer else dict(eqn.params)
      ops.append(Op("layer" if layer else eqn.primitive.name, params, tuple(ins), tuple(outs),
                    where, layer))
    for v, a in zip(eqn.outvars, outs, strict=True):
      env[v] = a
  return [read(v) for v in jaxpr.outvars]


def _live(ops: list[Op], output: Atom) -> list[Op]:
  """The ops `output` depends on, in order."""
  needed = {id(output)}
  kept = []
  for op in reversed(ops):
    if any(id(v) in needed for v in op.outs):
      kept.append(op)
      needed.update(id(a) for a in op.ins)
  return kept[::-1]


def trace(model: nn.Module, variables: Mapping[str, Any], image_shape: Sequence[int],
          call_kwargs: Mapping[str, Any] | None = None) -> Program:
  """The ops `model.apply(variables, image, **call_kwargs)` performs, from image to output.

  Args:
    model: an unbound flax.linen model taking a [B, H, W, C] float image.
    variables: its variables (any collections; read for shapes only).
    image_shape: [H, W, C] of one image.
    call_kwargs: keyword arguments of the call; default `{'train': False}` (the project's models).

  Returns:
    The flattened Program. Raises ValueError (one line) for a layer the graph cannot express or a
    model that does not return one array.
  """
  call_kwargs = {"train": False} if call_kwargs is None else dict(call_kwargs)
  image = jax.ShapeDtypeStruct((2, *image_shape), jnp.float32)  # B = 2: batch is told apart

  def apply(variables, x):
    with nn.intercept_methods(_record):
      return model.apply(variables, x, **call_kwargs)

  variables = {k: v for k, v in variables.items() if v}
  closed = jax.make_jaxpr(apply)(variables, image)
  leaves, _ = jax.tree_util.tree_flatten_with_path(variables)
  args: list[Atom] = [Param("/".join(str(getattr(k, "key", k)) for k in path), np.shape(leaf))
                      for path, leaf in leaves]
  x = Value(tuple(image.shape))
  args.append(x)
  ops: list[Op] = []
  outs = _flatten(closed.jaxpr, closed.consts, args, ops, "")
  if len(outs) != 1:
    raise ValueError(f"the model returns {len(outs)} arrays; export needs it to return the "
                     "logits alone")
  # The root module's class name leads every name stack; module paths start below it.
  ops = [dataclasses.replace(op, where=op.where.partition("/")[2]) for op in _live(ops, outs[0])]
  return Program(x, outs[0], ops)
