"""Forward time of each activation quantizer alone, in training mode, on one activation tensor.

  python bench/quantizer_forward.py --shape=128,14,14,6

Explains the train-step ratios of bench/step_time.py: the quantizer's own cost per call, jitted,
median of `--reps` timed calls (the specs are the activation quantizers of its rows).
"""

from __future__ import annotations

import statistics
import time

import jax
from absl import app, flags

from quantjax import quantizers
from quantjax.reports.machine import machine

_SHAPE = flags.DEFINE_list("shape", ["128", "14", "14", "6"], "Activation shape [B, H, W, C].")
_REPS = flags.DEFINE_integer("reps", 30, "Timed calls per quantizer.")

SPECS = {
    "uniform u4 (max)": dict(name="uniform", bits=4, signed=False, scale_method="max"),
    "pact u4": dict(name="pact", bits=4),
    "esb u4 k2": dict(name="esb", bits=4, significant_bits=2, signed=False),
    "log u4 (max)": dict(name="log", bits=4, signed=False, full_scale="max"),
    "log u4 (sqnr)": dict(name="log", bits=4, signed=False, full_scale="sqnr"),
    "pot u4 (sqnr)": dict(name="pot", bits=4, signed=False, full_scale="sqnr"),
    "liss u4 (gaussian)": dict(name="liss", bits=4, int_bits=8, fit="gaussian"),
}


def main(argv):
  del argv
  shape = tuple(int(d) for d in _SHAPE.value)
  x = jax.nn.relu(jax.random.normal(jax.random.key(0), shape))
  print(f"forward in training mode on {shape}, median of {_REPS.value} calls; {machine()}")
  print("| quantizer | ms |\n|---|---|")
  for label, spec in SPECS.items():
    q = quantizers.from_dict(spec)
    params, state = q.init(x, "act")
    fn = jax.jit(lambda v, q=q, p=params, s=state: q.apply(v, p, s, "act", True)[0])
    fn(x).block_until_ready()
    times = []
    for _ in range(_REPS.value):
      start = time.perf_counter()
      fn(x).block_until_ready()
      times.append(time.perf_counter() - start)
    print(f"| {label} | {1e3 * statistics.median(times):.2f} |")


if __name__ == "__main__":
  app.run(main)
