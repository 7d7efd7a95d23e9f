"""XLA's int8 convolutions and matmuls against float32 ones, for the layer shapes of the registry.

  python bench/int8_products.py --out=results/int8_products.md

Each shape runs as a float32 `conv_general_dilated` / `dot_general` and as int8 x int8 with an
int32 sum (`preferred_element_type=int32`), interleaved: every repetition times both once, and
the ratio int8 / float32 is taken within each repetition (its median and interquartile range are
shown). Batch 128, 'SAME' padding, stride 1. The table is what `quant.integer_products='auto'`
(`quantjax.int8.AUTO_MIN_CHANNELS`) is decided by: on this CPU the int8 kernels
were slower than float32 below 32 input channels and faster from 32 on. Rows naming an int8 form
time the lowerings the integer emulator's pure-integer path takes below 32 input channels
(`quantjax.intsim.emulator.conv_lowering`): the kernel padded with zero columns to 32 outputs,
or the input's patches times the kernel as an int8 matrix.
"""

from __future__ import annotations

import datetime
import statistics
import sys
import time

import jax
import jax.numpy as jnp
from absl import app, flags

from quantjax import int8
from quantjax.intsim.lowering import conv_patches
from quantjax.reports.machine import machine
from quantjax.workdir import write_text_atomic

_REPS = flags.DEFINE_integer("reps", 9, "Interleaved repetitions per shape.")
_OUT = flags.DEFINE_string("out", "", "Markdown output (optional).")

# (what, spatial size, input channels, output channels, kernel size[, int8 form]); 0 spatial =
# a matmul. The int8 form is the direct convolution unless named: 'padded' (the kernel padded
# with zero columns to 32 outputs, the extra sums dropped) or 'patches' (the input's patches
# times the kernel as a matrix), the lowerings the integer emulator picks below 32 inputs.
SHAPES = (
    ("LeNet-5 conv2", 14, 6, 16, 5),
    ("LeNet-5 conv2, int8 as patches", 14, 6, 16, 5, "patches"),
    ("ResNet-20 stage 1", 32, 16, 16, 3),
    ("ResNet-20 stage 1, int8 padded to 32 outputs", 32, 16, 16, 3, "padded"),
    ("ResNet-20 stage 2", 16, 32, 32, 3),
    ("ResNet-20 stage 3", 8, 64, 64, 3),
    ("16 to 32 channels", 32, 16, 32, 3),
    ("VGG-small block 1", 32, 64, 64, 3),
    ("ResNet-18 stage 2", 16, 128, 128, 3),
    ("LeNet-5 fc1", 0, 400, 120, 0),
    ("LeNet-5 fc3", 0, 84, 10, 0),
    ("a 4096-wide dense layer", 0, 4096, 512, 0),
)
_DN = ("NHWC", "HWIO", "NHWC")


def _programs(size: int, cin: int, cout: int, k: int, form: str = "direct"):
  """(float32 args, int8 args, the product as one jitted function taking a result type)."""
  if size:
    x = jax.random.normal(jax.random.key(0), (128, size, size, cin))
    w = jax.random.normal(jax.random.key(1), (k, k, cin, cout))
    pad = ((k // 2, (k - 1) // 2),) * 2  # 'SAME' at stride 1

    def product(a, b, pref):
      if pref is not None and form == "patches":
        return conv_patches(a, b, (1, 1), pad, pref)
      if pref is not None and form == "padded":
        b = jnp.pad(b, ((0, 0),) * 3 + ((0, max(32 - cout, 0)),))
      return jax.lax.conv_general_dilated(a, b, (1, 1), pad, dimension_numbers=_DN,
                                          preferred_element_type=pref)[..., :cout]
  else:
    x = jax.random.normal(jax.random.key(0), (128, cin))
    w = jax.random.normal(jax.random.key(1), (cin, cout))
    def product(a, b, pref):
      return jax.lax.dot_general(a, b, (((1,), (0,)), ((), ())), preferred_element_type=pref)
  as_int8 = lambda t: jnp.clip(jnp.round(30 * t), -127, 127).astype(jnp.int8)  # noqa: E731
  f32 = jax.jit(lambda a, b: product(a, b, None))
  i8 = jax.jit(lambda a, b: product(a, b, jnp.int32))
  return (f32, (x, w)), (i8, (as_int8(x), as_int8(w)))


def _time(fn, args, calls: int) -> float:
  start = time.perf_counter()
  for _ in range(calls):
    out = fn(*args)
  jax.block_until_ready(out)
  return (time.perf_counter() - start) / calls


def main(argv):
  del argv
  rows = []
  for what, size, cin, cout, k, *form in SHAPES:
    (f32, fargs), (i8, iargs) = _programs(size, cin, cout, k, *form)
    _time(f32, fargs, 2), _time(i8, iargs, 2)  # compile and warm up
    calls = max(1, int(0.05 / max(_time(f32, fargs, 1), 1e-6)))  # about 50 ms per timing
    times = [(_time(f32, fargs, calls), _time(i8, iargs, calls)) for _ in range(_REPS.value)]
    ratios = sorted(i / f for f, i in times)
    q1, q3 = statistics.quantiles(ratios, n=4)[0], statistics.quantiles(ratios, n=4)[2]
    shape = (f"{size}x{size}, {cin} to {cout}, {k}x{k}" if size else f"{cin} to {cout}")
    auto = "int8" if cin >= int8.AUTO_MIN_CHANNELS else "float32"
    if form:
      auto = "(the emulator's integer path)"
    rows.append(f"| {what} | {shape} | {statistics.median(f for f, _ in times) * 1e3:.3f} | "
                f"{statistics.median(i for _, i in times) * 1e3:.3f} | "
                f"{statistics.median(ratios):.2f} | {q1:.2f}-{q3:.2f} | {auto} |")
    print(rows[-1], flush=True)
  text = "\n".join([
      "# int8 against float32 convolutions and matmuls", "",
      f"Generated by `python bench/int8_products.py --reps={_REPS.value}` on "
      f"{datetime.date.today().isoformat()}, {machine()}; batch 128; {_REPS.value} interleaved "
      "repetitions; the ratio int8 / float32 is taken within each (median and interquartile "
      "range). The last column is what `quant.integer_products='auto'` forms such a layer with "
      f"(int8 from {int8.AUTO_MIN_CHANNELS} input channels on, on a CPU).", "",
      "| layer | shape | float32 ms | int8 ms | int8 / float32 | IQR | 'auto' |",
      "|---|---|---|---|---|---|---|", *rows, ""])
  print(text)
  if _OUT.value:
    write_text_atomic(_OUT.value, text)


if __name__ == "__main__":
  sys.exit(app.run(main))
