"""Emulator throughput against the jitted float model on the same CPU, batch 256.

  python bench/intsim_throughput.py --workdir=runs/int_agreement/uniform_w8a8
  python bench/intsim_throughput.py --workdir=... --repeats=30 \
    --out=results/intsim_throughput.md

The float model is the run's network with its trained weights and no quantizers
(`model.apply`, jitted, float32 NHWC input); the emulator runs the exported integer graph on uint8
images with MAC path 'auto' (float32 where provably exact, else int) and 'int' (jax.lax int8/int16
operands, preferred_element_type=int32). Each computes the integer outputs alone
(`Emulator.outputs`, what the accelerator computes); 'auto' also runs as `eval.py --mode=int`
does, counting every accumulator's overflows and max |s| (`Emulator.__call__`). The integer
convolutions of 'int' run as the emulator picks them per layer (`conv_lowering('auto')`: on a
CPU, patches times an integer matrix for int8 operands below 32 input channels, else
`lax.conv_general_dilated`), and all as one or the other (patches is the lowering on a GPU,
whose XLA backend has no general integer convolution). Timings are interleaved
(float, each emulator, float, ...) and the median of `repeats` calls is reported, each call
blocked until ready. Prints the ratio emulator images/s ÷ float images/s, taken within each
repetition, as its median and interquartile range (issue 14's targets: >= 1.0 for 'auto', >= 0.9
for 'int' as the emulator lowers it) and writes a Markdown note with date and machine.
"""

from __future__ import annotations

import datetime
import os
import shlex
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags  # noqa: E402

_WORKDIR = flags.DEFINE_string("workdir", None, "A quantized run (train.py workdir).")
_BATCH = flags.DEFINE_integer("batch", 256, "Images per call.")
_REPEATS = flags.DEFINE_integer("repeats", 30, "Timed calls per contender (median reported).")
_OUT = flags.DEFINE_string("out", "", "Markdown output (default: print only).")
flags.mark_flags_as_required(["workdir"])


def main(argv):
  del argv
  import jax
  import jax.numpy as jnp
  import numpy as np

  from quantjax.export import export_run, load_run
  from quantjax.intsim import Accelerator, Emulator
  from quantjax.intsim.evaluate import raw_split
  from quantjax.reports.machine import machine

  exp, variables, _ = load_run(_WORKDIR.value)
  graph = export_run(exp, variables)
  images, _ = raw_split(exp.dataset, "test")
  images = images[: _BATCH.value]
  if len(images) < _BATCH.value:
    images = np.resize(images, (_BATCH.value, *images.shape[1:]))
  x = jnp.asarray(exp.dataset.normalise(images))
  float_vars = {k: v for k, v in variables.items() if k in ("params", "batch_stats")}
  float_fn = jax.jit(lambda v, x: exp.model.apply(v, x, train=False))
  contenders = {"float": lambda: float_fn(float_vars, x).block_until_ready()}
  u8 = jnp.asarray(images)
  for mac, conv, count in (("auto", "auto", False), ("auto", "auto", True), ("int", "auto", False),
                           ("int", "lax", False), ("int", "patches", False)):
    emulator = Emulator(graph, Accelerator(mac=mac), conv=conv)

    def call(emulator=emulator, count=count):
      with jax.enable_x64(True):
        jax.block_until_ready(emulator.run_jax(u8, count=count))
    name = f"emulator ({mac})" if conv == "auto" else f"emulator ({mac}, {conv} conv)"
    contenders[name + (", with overflow and max-magnitude counts" if count else "")] = call
  failed = {}
  for name, fn in list(contenders.items()):  # compile and warm up
    try:
      fn()
      fn()
    except Exception as e:  # noqa: BLE001  e.g. XLA GPU has no integer convolution for 'int'
      failed[name] = next((line for line in str(e).splitlines() if line.strip()),
                          type(e).__name__)[:160]
      del contenders[name]
  times = {name: [] for name in contenders}
  for _ in range(_REPEATS.value):
    for name, fn in contenders.items():
      t = time.perf_counter()
      fn()
      times[name].append(time.perf_counter() - t)
  median = {name: statistics.median(ts) for name, ts in times.items()}
  rate = {name: _BATCH.value / m for name, m in median.items()}
  # Throughput ratio to float within each repetition (float and the emulators ran back to back),
  # so the machine's load moves both: its median and interquartile range are the figures.
  ratios = {name: [f / t for f, t in zip(times["float"], ts, strict=True)]
            for name, ts in times.items()}
  quartiles = {name: statistics.quantiles(r, n=4) for name, r in ratios.items()}
  date = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
  command = shlex.join(["python", "bench/intsim_throughput.py", *sys.argv[1:]])
  lines = ["# Integer emulator throughput", "",
           f"Generated {date} on {machine()} by `{command}` (load average "
           f"{os.getloadavg()[0]:.1f} at the end: other jobs shared the machine).", "",
           f"Model: {exp.config.model} from `{_WORKDIR.value}`; batch {_BATCH.value}; median of "
           f"{_REPEATS.value} interleaved calls (ratios: per repetition).", "",
           "| contender | ms / batch | images / s | ratio to float: median [IQR] | target |",
           "|---|---|---|---|---|"]
  targets = {"emulator (auto)": 1.0, "emulator (auto), with overflow and max-magnitude counts": 1.0,
             "emulator (int)": 0.9}
  for name in contenders:
    q1, q2, q3 = quartiles[name]
    target = targets.get(name)
    verdict = "" if target is None else f">= {target:g}: {'met' if q2 >= target else 'NOT met'}"
    lines.append(f"| {name} | {1e3 * median[name]:.2f} | {rate[name]:.0f} | "
                 f"{q2:.2f} [{q1:.2f}, {q3:.2f}] | {verdict} |")
  for name, error in failed.items():
    lines.append(f"| {name} | failed on this backend: {error} | | | |")
  text = "\n".join(lines) + "\n"
  print(text)
  if _OUT.value:
    with open(_OUT.value, "w") as f:
      f.write(text)


if __name__ == "__main__":
  app.run(main)
