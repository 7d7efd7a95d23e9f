"""What the emulated accelerator is: accumulator, requantization rounding, and MAC datapath."""

from __future__ import annotations

import dataclasses

from quantjax.export.rescale import ROUNDING

OVERFLOW = ("saturate", "wrap")
MAC_PATHS = ("auto", "int", "f32")


@dataclasses.dataclass(frozen=True, kw_only=True)
class Accelerator:
  """One run's accelerator model (hashable: it is static under jit).

  The accumulator holds `acc_bits` (8 to 32) two's-complement bits; a conv/dense result (bias
  included) or a residual sum outside its range saturates to the nearest end or wraps modulo
  `2^acc_bits`, and is counted as an overflow. Saturation is applied to the finished sum (an
  accumulator with guard bits that clamps on write-back); wrapping is order-independent anyway.
  """

  acc_bits: int = 32  # accumulator width, 8 to 32
  overflow: str = "saturate"  # 'saturate' or 'wrap'
  rounding: str = "half_even"  # requantization: 'half_even' (fake-quant's), 'half_up', 'floor'
  # How the exact integer MAC is computed: 'int' = jax.lax int8/int16 operands with
  # preferred_element_type=int32 (int64 beyond 2^31); 'f32' = float32 where the bound
  # K·max|a|·max|w| < 2^24 proves every partial sum exact, else as 'int'; 'auto' = 'int' where
  # integer operands are the faster (`lowering.integer_faster`), else as 'f32'. All give the
  # same integers.
  mac: str = "auto"

  def __post_init__(self):
    if not isinstance(self.acc_bits, int) or not 8 <= self.acc_bits <= 32:
      raise ValueError(f"acc_bits={self.acc_bits!r} is out of range; valid: integers 8 to 32")
    for field, valid in (("overflow", OVERFLOW), ("rounding", ROUNDING), ("mac", MAC_PATHS)):
      value = getattr(self, field)
      if value not in valid:
        raise ValueError(f"{field}={value!r} is not valid; choose one of {', '.join(valid)}")
