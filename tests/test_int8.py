"""quantjax.int8: the shift onto int8 and where int8 kernels pay."""

import pytest

from quantjax import int8


@pytest.mark.parametrize("lo, hi, expected", [
    (-127, 127, 0),  # symmetric 8-bit codes already fit
    (-128, 127, 0),
    (0, 15, 0),  # 4-bit unsigned codes fit too
    (0, 255, 128),  # unsigned 8-bit: 0..255 -> -128..127
    (5, 260, 133),  # any 256 consecutive integers
])
def test_shift_puts_the_range_on_int8(lo, hi, expected):
  o = int8.shift(lo, hi)
  assert o == expected
  assert int8.INT8_MIN <= lo - o and hi - o <= int8.INT8_MAX


def test_int8_pays_on_a_cpu_from_32_input_channels():
  assert int8.pays(32, "cpu") and int8.pays(512, "cpu")
  assert not int8.pays(31, "cpu") and not int8.pays(16, "cpu")
  assert not int8.pays(64, "gpu") and not int8.pays(64, "tpu")
