"""A quantized layer's products on its integers: int8 operands and an int32 sum, in training too.

When both operands of a Conv/Dense are quantized onto integer grids (`Quantizer.integer_grid`:
`x = sx·vx`, `w = sw·vw`), the layer's product `x ⊛ w` equals `sx·sw·(vx ⊛ vw)`. On a CPU an
int8 × int8 → int32 convolution or matmul runs several times faster than the float32 one, so the
forward pass forms `vx ⊛ vw` on the integers, as an integer accelerator would, and rescales. The
sum is exact (the float product rounds; the two agree to float32 rounding), and the gradient is
the float product's own, taken at the same fake-quantized operands: training sees the same
straight-through and LSQ gradients either way.

Used when (`eligible`):
  - 'auto': where int8 kernels pay (`quantjax.int8.pays`: a CPU, at least 32 input channels or
    features); 'on' forces them;
  - the weight integers fit int8, and the activation integers span at most 256 values: an
    unsigned 8-bit activation (0..255) is shifted by -128 onto int8, and the shift is added back
    as 128·(1 ⊛ vw), one image's product (zero padding included), broadcast over the batch;
  - the activation's scale is one number (its grid is per tensor);
  - no int32 sum can overflow: K·max|vx|·max|vw| < 2^31, K the products summed per output.
Otherwise the layer takes the float product of the fake-quantized values.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import jax
import jax.numpy as jnp

from quantjax import int8
from quantjax.int8 import INT8_MAX, INT8_MIN
from quantjax.quantizers.base import IntegerGrid

MODES = ("auto", "on", "off")
_INT32_MAX = 2**31 - 1


def check_mode(mode: str) -> None:
  if mode not in MODES:
    raise ValueError(f"quant.integer_products={mode!r} is not valid; choose one of "
                     f"{', '.join(MODES)}")


def eligible(mode: str, act: IntegerGrid | None, weight: IntegerGrid | None,
             kernel_shape: tuple[int, ...]) -> bool:
  """Whether a layer with these grids (and kernel) takes the integer product; see the module."""
  if mode == "off" or act is None or weight is None:
    return False
  if mode == "auto" and not int8.pays(kernel_shape[-2]):  # kernel: [..., in, out]
    return False
  if weight.lo < INT8_MIN or weight.hi > INT8_MAX or act.hi - act.lo > INT8_MAX - INT8_MIN:
    return False
  if math.prod(jnp.shape(act.scale)) != 1 or jnp.ndim(weight.scale) > 1:
    return False
  if jnp.ndim(weight.scale) == 1 and jnp.shape(weight.scale)[0] not in (1, kernel_shape[-1]):
    return False
  terms = math.prod(kernel_shape[:-1])  # products summed per output (grouped convs: fewer)
  largest = max(abs(act.lo), abs(act.hi)) * max(abs(weight.lo), abs(weight.hi))
  return terms * largest <= _INT32_MAX


def product(primitive: Callable, x: jax.Array, w: jax.Array, act: IntegerGrid,
            weight: IntegerGrid) -> jax.Array:
  """`primitive(x, w)` (a bound `conv_general_dilated` or `dot_general`) on the integers.

  `x` and `w` are the fake-quantized operands, `x = act.scale·vx` and `w = weight.scale·vw`.
  Forward: `act.scale·weight.scale·(vx ⊛ vw)`, int8 operands and an int32 sum. Backward:
  `primitive`'s own VJP at (x, w); the scales get no gradient here (theirs flows through the
  quantizers that made x and w).
  """
  offset = int8.shift(act.lo, act.hi)
  out_dtype = jnp.result_type(x, w)

  def integers(t, scale, shift):
    return (jnp.round(t / scale.astype(t.dtype)) - shift).astype(jnp.int8)

  @jax.custom_vjp
  def integer_product(x, w, sx, sw):  # the scales are arguments: no tracer is closed over
    vx, vw = integers(x, sx, offset), integers(w, sw, 0)
    total = primitive(vx, vw, preferred_element_type=jnp.int32)
    if offset:  # add back offset·(1 ⊛ vw): one all-ones image, its padding zero as in x
      ones = jnp.ones((1, *vx.shape[1:]), jnp.int8)
      total = total + offset * primitive(ones, vw, preferred_element_type=jnp.int32)
    return (total.astype(jnp.float32) * (sx * sw).astype(jnp.float32)).astype(out_dtype)

  def forward(x, w, sx, sw):
    return integer_product(x, w, sx, sw), (x, w, sx, sw)

  def backward(residuals, g):
    x, w, sx, sw = residuals
    _, vjp = jax.vjp(primitive, x, w)
    dx, dw = vjp(g.astype(out_dtype))
    return dx, dw, jnp.zeros_like(sx), jnp.zeros_like(sw)

  integer_product.defvjp(forward, backward)
  sx = jnp.reshape(act.scale, ())
  sw = jnp.reshape(weight.scale, (-1,))  # per output channel: the output's last axis
  return integer_product(x, w, jax.lax.stop_gradient(sx), jax.lax.stop_gradient(sw))
