"""The integer convolution's lowerings: the same integers as an independent loop, and which one
the emulator picks on which backend."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from quantjax.intsim.lowering import (
  conv_lowering,
  conv_patches,
  integer_faster,
  padded_outputs,
)


@pytest.mark.parametrize("strides,padding", [
    ((1, 1), ((0, 0), (0, 0))), ((1, 1), ((2, 2), (2, 2))), ((2, 2), ((0, 1), (0, 1))),
    ((2, 1), ((1, 0), (2, 1)))])
@pytest.mark.parametrize("dtype,pref", [(np.int8, np.int32), (np.int64, np.int64)])
def test_conv_patches_is_the_integer_conv(strides, padding, dtype, pref):
  rng = np.random.default_rng(0)
  a = rng.integers(-128, 128, (3, 9, 8, 5)).astype(dtype)
  w = rng.integers(-128, 128, (3, 4, 5, 7)).astype(dtype)
  with jax.enable_x64(True):  # as inside the emulator
    got = np.asarray(conv_patches(jnp.asarray(a), jnp.asarray(w), strides, padding, pref))
    lax = np.asarray(jax.lax.conv_general_dilated(
        jnp.asarray(a), jnp.asarray(w), strides, padding,
        dimension_numbers=("NHWC", "HWIO", "NHWC"), preferred_element_type=pref))
  # An independent NumPy loop: every output position's window times the kernel, in int64.
  ap = np.pad(a.astype(np.int64), ((0, 0), padding[0], padding[1], (0, 0)))
  ho, wo = (ap.shape[1] - 3) // strides[0] + 1, (ap.shape[2] - 4) // strides[1] + 1
  want = np.zeros((3, ho, wo, 7), np.int64)
  for y in range(ho):
    for x in range(wo):
      win = ap[:, y * strides[0]:y * strides[0] + 3, x * strides[1]:x * strides[1] + 4]
      want[:, y, x] = np.tensordot(win, w.astype(np.int64), axes=3)
  assert got.dtype == pref
  np.testing.assert_array_equal(got, want)
  np.testing.assert_array_equal(got, lax)


def test_conv_lowering_by_backend():
  assert conv_lowering("auto", "gpu") == "patches" and conv_lowering("auto", "cpu") == "lax"
  assert conv_lowering("lax", "gpu") == "lax"
  # On a CPU, int8 operands with few input channels run as patches; from 16 on, directly, the
  # kernel padded to 32 output channels; wider operands always directly, unpadded.
  lowering = {c: conv_lowering("auto", "cpu", int8_operands=True, in_channels=c)
              for c in (1, 6, 15, 16, 31, 32, 64)}
  assert lowering == {1: "patches", 6: "patches", 15: "patches", 16: "lax", 31: "lax",
                      32: "lax", 64: "lax"}
  assert conv_lowering("auto", "cpu", int8_operands=False, in_channels=6) == "lax"
  assert conv_lowering("auto", "gpu", int8_operands=True, in_channels=64) == "patches"
  assert [padded_outputs(o, "lax", True, "cpu") for o in (6, 16, 32, 64)] == [32, 32, 32, 64]
  assert padded_outputs(16, "patches", True, "cpu") == 16
  assert padded_outputs(16, "lax", False, "cpu") == 16
  assert padded_outputs(16, "lax", True, "gpu") == 16
  with pytest.raises(ValueError, match="valid: auto, lax, patches"):
    conv_lowering("im2col")


def test_integer_operands_where_faster_than_float32():
  # 'auto' MACs on a CPU: int8 from 32 input channels (conv or dense), and an image's
  # convolution (fewer than 4 inputs) on int8 or int16; float32 between; never on a GPU.
  cpu = {(op, c, i8): integer_faster(op, c, i8, "cpu")
         for op in ("conv", "dense") for c in (1, 3, 4, 16, 31, 32, 400) for i8 in (True, False)}
  assert {k for k, faster in cpu.items() if faster} == {
      ("conv", 1, True), ("conv", 1, False), ("conv", 3, True), ("conv", 3, False),
      ("conv", 32, True), ("conv", 400, True), ("dense", 32, True), ("dense", 400, True)}
  assert not any(integer_faster("conv", c, True, "gpu") for c in (1, 64))
