"""int8 operands: their range, the shift that puts unsigned 8-bit codes on them, and where XLA's
int8 × int8 → int32 kernels pay.

Training's integer products (`quantjax.intercept.integer`) and the integer emulator
(`quantjax.intsim`) both form a layer's sum on int8 operands where they fit and where it is
faster, by the rules here.
"""

from __future__ import annotations

import jax

INT8_MIN, INT8_MAX = -128, 127
# From this many input channels (or input features) on, XLA CPU's int8 convolutions and matmuls
# ran 2-10x faster than float32 ones on this project's Intel host; below it, 2-9x slower
# (`bench/int8_products.py`, `results/int8_products.md`). On an AMD EPYC without VNNI (AVX2 only)
# they ran 0.7-0.95x of float32 from 32 on, and 1.27x at 128 channels
# (`results/int8_products_epyc.md`): the rule was set on the Intel host.
AUTO_MIN_CHANNELS = 32


def pays(in_channels: int, backend: str | None = None) -> bool:
  """Whether int8 kernels are faster than float32 ones for a layer with `in_channels` inputs:
  on a CPU (XLA GPU lowers no general integer convolution), from `AUTO_MIN_CHANNELS` on."""
  return (backend or jax.default_backend()) == "cpu" and in_channels >= AUTO_MIN_CHANNELS


def shift(lo: int, hi: int) -> int:
  """The shift `o` that puts integers in [lo, hi] (at most 256 values) inside int8 as `v - o`
  (0 when they already are)."""
  return 0 if lo >= INT8_MIN and hi <= INT8_MAX else lo - INT8_MIN
