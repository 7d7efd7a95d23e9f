"""The convolution training calls: XLA's, with a kernel gradient a CPU computes fast.

XLA's CPU backend computes a 2-D convolution's kernel gradient as one more convolution, whose
"kernel" is the whole output gradient and whose output is the small kernel. On the early layers
of the registry's CNNs (28x28 or 32x32 maps, 16-32 channels) that took 20-30x the forward
convolution's time (2026-12-01, 2 cores; `bench/conv_kernel_grad.py`), most of a training step.

The same gradient, tap by tap: for each of the kernel's `kh x kw` taps, the input window the tap
reads (a strided slice of the padded input, `[B, H', W', C]`) contracted with the output
gradient `[B, H', W', K]` over batch and positions is one `[C, K]` matrix product. Nothing of
the size of the im2col matrix is built: concatenating the taps into it took XLA's CPU backend
100-200 ms on these layers at batch 128, as long as the whole gradient tap by tap. It is the
same sum in another order: float rounding differs, nothing else.

`conv_general_dilated` has `jax.lax.conv_general_dilated`'s signature and forward (bit for bit:
it calls it); its input gradient is XLA's own. The taps replace XLA's kernel gradient where
`kernel_grad` says: 'xla' never, 'taps' wherever the convolution is eligible (2-D, NHWC/HWIO,
no input dilation or groups, non-negative padding, floating operands), 'auto' where it is
eligible, JAX's default backend is the CPU with a single device, the CPU is one where the taps
were measured to pay (`taps_pay_here`: x86-64 without AVX-512), the output map has at least
`AUTO_MIN_PIXELS` positions and the input at least `AUTO_MIN_CHANNELS` channels (smaller maps
gained nothing; LeNet-5's 1-channel first layer, 25 taps of one channel each, lost 1.5x). With
one CPU device per core (`config.cpu_devices`), XLA's kernel-gradient convolution runs on every
core at once and the taps lost: ResNet-20 trained at 0.91-0.94 steps/s with them against 1.10
with XLA's (results/cpu_devices_taps_epyc.md). On an AVX-512 host (an Intel Xeon with AMX,
2026-12-03) XLA's own kernel gradient is fast: there the taps took 0.77-0.84x its time on the
32- and 64-channel layers but 1.28x on ResNet-20's 16-channel ones; whole W8A8 training steps
took 1.06-1.10x with them on ResNet-20, VGG-small and ResNet-18 (1.05-1.22x in a run an hour
before) and 0.89x on the Sequential net (results/conv_kernel_grad_xeon.md), against 0.41-0.70x on
the AVX2 AMD EPYC where they were chosen (results/conv_kernel_grad.md). Forward-mode
differentiation (`jax.jvp`) of a call that takes the taps is not supported (a `jax.custom_vjp`);
'xla' gives it back. A `jax.lax.conv_general_dilated` that another library swapped for its own
(`lax_conv_swapped`: the attribute, or the function's code in place, as Qwix's interception does)
keeps that library's forward and gradient.
"""

from __future__ import annotations

import functools
import platform
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

KERNEL_GRADS = ("auto", "taps", "xla")
_LAX_CONV = jax.lax.conv_general_dilated  # jax.lax's own, as imported
_LAX_CONV_CODE = getattr(_LAX_CONV, "__code__", None)  # what it runs (swappable in place)
AUTO_MIN_PIXELS = 24 * 24  # 'auto': output maps at least this big (H' x W')
AUTO_MIN_CHANNELS = 8  # 'auto': inputs with at least this many channels
_NHWC = (0, 3, 1, 2)  # ConvDimensionNumbers specs: (batch, feature, spatial...) of NHWC
_HWIO = (3, 2, 0, 1)  # (out feature, in feature, spatial...) of HWIO


def check_kernel_grad(kernel_grad: str) -> str:
  if kernel_grad not in KERNEL_GRADS:
    raise ValueError(f"conv_kernel_grad={kernel_grad!r} is not valid; choose one of "
                     f"{', '.join(KERNEL_GRADS)}")
  return kernel_grad


def conv_general_dilated(lhs, rhs, window_strides: Sequence[int], padding,
                         lhs_dilation: Sequence[int] | None = None,
                         rhs_dilation: Sequence[int] | None = None,
                         dimension_numbers: Any = None, feature_group_count: int = 1,
                         batch_group_count: int = 1, precision: Any = None,
                         preferred_element_type: Any = None, *, kernel_grad: str = "auto"):
  """`jax.lax.conv_general_dilated`, with the kernel gradient `kernel_grad` chooses."""
  call = functools.partial(
      jax.lax.conv_general_dilated, window_strides=window_strides, padding=padding,
      lhs_dilation=lhs_dilation, rhs_dilation=rhs_dilation,
      dimension_numbers=dimension_numbers, feature_group_count=feature_group_count,
      batch_group_count=batch_group_count, precision=precision,
      preferred_element_type=preferred_element_type)
  spec = _tap_spec(lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation,
                   dimension_numbers, feature_group_count, batch_group_count,
                   preferred_element_type)
  # A library that swapped jax.lax's convolution for its own (a QAT library's interception) keeps
  # its forward and gradient: the taps would differentiate jax.lax's instead.
  if spec is None or check_kernel_grad(kernel_grad) == "xla" or lax_conv_swapped():
    return call(lhs, rhs)
  strides, pads, dilation = spec
  if kernel_grad == "auto":
    out_pixels = np.prod(jax.eval_shape(call, lhs, rhs).shape[1:3])
    if (jax.default_backend() != "cpu" or jax.local_device_count() > 1 or not taps_pay_here()
        or out_pixels < AUTO_MIN_PIXELS or lhs.shape[3] < AUTO_MIN_CHANNELS):
      return call(lhs, rhs)
  return _tapped(call, strides, pads, dilation, precision)(lhs, rhs)


def taps_pay(machine: str, cpuinfo: str) -> bool:
  """Whether a CPU is of the kind where the taps beat XLA's kernel gradient: x86-64 (`machine`,
  as `platform.machine()` names it) whose `flags` (`cpuinfo`: the text of Linux's /proc/cpuinfo)
  lack AVX-512. Measured on two hosts (the module's docstring): an AVX2 AMD EPYC, where they
  paid, and an AVX-512 Intel Xeon, where they did not; other CPUs (ARM, or no flags to read)
  keep XLA's, unmeasured."""
  if machine.lower() not in ("x86_64", "amd64"):
    return False
  flags = next((line.split(":", 1)[1].split() for line in cpuinfo.splitlines()
                if line.startswith("flags") and ":" in line), None)
  return flags is not None and "avx512f" not in flags


@functools.cache
def taps_pay_here() -> bool:
  """`taps_pay` for this host (read once)."""
  try:
    with open("/proc/cpuinfo") as f:
      cpuinfo = f.read()
  except OSError:  # not Linux: the flags are unknown
    cpuinfo = ""
  return taps_pay(platform.machine(), cpuinfo)


def lax_conv_swapped() -> bool:
  """Whether another library swapped `jax.lax.conv_general_dilated` for its own: the module's
  attribute (monkeypatching) or, in place, the function's code (Qwix's interception rewrites
  `__code__` of functions without free variables, so the function object stays the same)."""
  current = jax.lax.conv_general_dilated
  return current is not _LAX_CONV or getattr(current, "__code__", None) is not _LAX_CONV_CODE


def primitive(kernel_grad: str):
  """`conv_general_dilated` bound to `kernel_grad`, for a module's `conv_general_dilated`."""
  return functools.partial(conv_general_dilated, kernel_grad=check_kernel_grad(kernel_grad))


def _tap_spec(lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation, dimension_numbers,
              feature_group_count, batch_group_count, preferred_element_type):
  """(strides, explicit pads, kernel dilation) when the taps apply, else None."""
  if lhs.ndim != 4 or rhs.ndim != 4 or feature_group_count != 1 or batch_group_count != 1:
    return None
  if not (jnp.issubdtype(lhs.dtype, jnp.floating) and jnp.issubdtype(rhs.dtype, jnp.floating)):
    return None
  if preferred_element_type is not None and not jnp.issubdtype(preferred_element_type,
                                                               jnp.floating):
    return None
  if any(d != 1 for d in (lhs_dilation or (1, 1))):
    return None
  dn = jax.lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
  if tuple(dn.lhs_spec) != _NHWC or tuple(dn.rhs_spec) != _HWIO or tuple(dn.out_spec) != _NHWC:
    return None
  dilation = tuple(rhs_dilation or (1, 1))
  window = tuple((k - 1) * d + 1 for k, d in zip(rhs.shape[:2], dilation, strict=True))
  if isinstance(padding, str):
    pads = jax.lax.padtype_to_pads(lhs.shape[1:3], window, tuple(window_strides), padding)
  else:
    pads = padding
  pads = tuple((int(lo), int(hi)) for lo, hi in pads)
  if any(p < 0 for pair in pads for p in pair):
    return None
  return tuple(int(s) for s in window_strides), pads, dilation


def _tapped(call, strides, pads, dilation, precision):
  """`call` (the bound convolution) with the tap-by-tap kernel gradient."""

  @jax.custom_vjp
  def tap_kernel_grad_conv(lhs, rhs):  # the name the jaxpr shows
    return call(lhs, rhs)

  def forward(lhs, rhs):
    return call(lhs, rhs), (lhs, rhs)

  def backward(residuals, g):  # g: [B, H', W', K]
    lhs, rhs = residuals
    _, input_vjp = jax.vjp(lambda x: call(x, rhs), lhs)
    (d_lhs,) = input_vjp(g)
    return d_lhs, kernel_grad_taps(lhs, g, rhs.shape, strides, pads, dilation,
                                   precision).astype(rhs.dtype)

  tap_kernel_grad_conv.defvjp(forward, backward)
  return tap_kernel_grad_conv


def kernel_grad_taps(lhs, g, kernel_shape, strides, pads, dilation, precision=None):
  """The kernel gradient [kh, kw, C, K] of an NHWC/HWIO convolution, one product per tap.

  `lhs` [B, H, W, C] the input, `g` [B, H', W', K] the output gradient; `pads` explicit
  ((lo, hi), (lo, hi)), non-negative.
  """
  kh, kw, c, k = kernel_shape
  b, ho, wo, _ = g.shape
  padded = jax.lax.pad(lhs, jnp.zeros((), lhs.dtype),
                       ((0, 0, 0), (*pads[0], 0), (*pads[1], 0), (0, 0, 0)))
  flat_g = g.reshape(-1, k)  # [B·H'·W', K]
  taps = []
  for i in range(kh):
    for j in range(kw):
      top, left = i * dilation[0], j * dilation[1]
      window = jax.lax.slice(padded, (0, top, left, 0),
                             (b, top + (ho - 1) * strides[0] + 1,
                              left + (wo - 1) * strides[1] + 1, c),
                             (1, strides[0], strides[1], 1))  # [B, H', W', C]
      taps.append(jax.lax.dot_general(window.reshape(-1, c), flat_g, (((0,), (0,)), ((), ())),
                                      precision=precision,
                                      preferred_element_type=jnp.float32))  # [C, K]
  return jnp.stack(taps).reshape(kh, kw, c, k)
