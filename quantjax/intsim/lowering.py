"""How the emulator forms an integer convolution on a backend: lowerings that give the same
integers at different speeds.

`lax.conv_general_dilated` with `preferred_element_type` where the backend lowers integer
convolutions well, else the input's patches times the kernel as an integer matrix (XLA's GPU
backend lowers no general integer convolution); on a CPU, a direct int8 convolution with few
output channels runs on a kernel padded with zero columns.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from quantjax import int8

CONV_LOWERINGS = ("auto", "lax", "patches")


# XLA CPU's direct int8 convolution (int32 sums) is 2-10x slower than float32 below 32 input
# channels, unless it has at least 32 output channels and this many inputs (then it is as fast
# as float32 or faster); below this many inputs the patches form is the faster integer one.
_PADDED_MIN_IN = 16
_FAST_MIN_OUT = 32
_FEW_INPUTS = 4  # an image's channels: `integer_faster`


def conv_lowering(conv: str = "auto", backend: str | None = None, *, int8_operands: bool = False,
                  in_channels: int | None = None) -> str:
  """How integer convolutions run: 'lax' or 'patches'.

  'auto': 'patches' on a GPU backend. On a CPU, 'lax' except for int8 operands below
  `_PADDED_MIN_IN` input channels, where the patches form is faster (LeNet-5's 6 to 16 channels
  at batch 256: 1.2 ms against 8.3 ms direct, 1.7 ms in float32). A direct int8 convolution with
  fewer than `_FAST_MIN_OUT` outputs gets its kernel padded with zero columns (`padded_outputs`):
  ResNet-20's 16 to 16 channels at 28x28, batch 256, took 8.2 ms so against 71 ms unpadded and
  21 ms as patches (8.7 ms in float32).
  """
  if conv not in CONV_LOWERINGS:
    raise ValueError(f"unknown conv lowering {conv!r}; valid: {', '.join(CONV_LOWERINGS)}")
  if conv != "auto":
    return conv
  backend = backend or jax.default_backend()
  if backend in ("gpu", "cuda", "rocm"):
    return "patches"
  if (int8_operands and in_channels is not None and not int8.pays(in_channels, backend)
      and in_channels < _PADDED_MIN_IN):
    return "patches"
  return "lax"


def integer_faster(op: str, in_channels: int, int8_operands: bool,
                   backend: str | None = None) -> bool:
  """Whether a conv/dense layer's exact sums run faster on integer operands than on float32
  ones, in the whole emulated graph, on a CPU:
  - int8 operands from `int8.AUTO_MIN_CHANNELS` inputs (`int8.pays`, as training's integer
    products);
  - a convolution with fewer than `_FEW_INPUTS` inputs (the image's), on int8 or int16
    operands: XLA's float32 convolution is slow there. LeNet-5's 5x5 1-to-6 convolution, batch
    256, one device: 7.3 ms a graph with it on int16 against 9.7 ms on float32; ResNet-20's 3x3
    1-to-16 the same either way.
  Elsewhere float32 (exact where the bound allows): in the graph, LeNet-5's 6-to-16 convolution
  as int8 patches took 2.2 ms more than on float32, though faster alone (1.2 against 1.7 ms).
  """
  if (backend or jax.default_backend()) != "cpu":
    return False
  return (int8_operands and int8.pays(in_channels, "cpu")) or (
      op == "conv" and in_channels < _FEW_INPUTS)


def padded_outputs(out_channels: int, lowering: str, int8_operands: bool,
                   backend: str | None = None) -> int:
  """The output channels a direct int8 convolution runs with on a CPU: at least
  `_FAST_MIN_OUT` (zero kernel columns, their sums dropped); otherwise `out_channels`."""
  backend = backend or jax.default_backend()
  if lowering == "lax" and int8_operands and backend == "cpu":
    return max(out_channels, _FAST_MIN_OUT)
  return out_channels


def conv_patches(a, w, strides, padding, preferred_element_type=None):
  """`conv_general_dilated(a, w, strides, padding)` (NHWC, HWIO, no dilation or groups) as the
  input's patches times the kernel as a matrix: one integer `dot_general`, exact like the conv."""
  kh, kw, c, o = w.shape
  a = jnp.pad(a, ((0, 0), tuple(padding[0]), tuple(padding[1]), (0, 0)))
  sh, sw = strides
  ho, wo = (a.shape[1] - kh) // sh + 1, (a.shape[2] - kw) // sw + 1
  taps = [jax.lax.slice(a, (0, i, j, 0), (a.shape[0], i + (ho - 1) * sh + 1,
                                          j + (wo - 1) * sw + 1, c), (1, sh, sw, 1))
          for i in range(kh) for j in range(kw)]  # (i, j, c) order, as HWIO flattens
  patches = jnp.concatenate(taps, axis=-1)
  return jax.lax.dot_general(patches, w.reshape(kh * kw * c, o), (((3,), (0,)), ((), ())),
                             preferred_element_type=preferred_element_type)
