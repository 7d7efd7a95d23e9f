"""Emulator throughput against the jitted float model on the same CPU, batch 256.

  python bench/intsim_throughput.py --workdir=runs/int_agreement/uniform_w8a8
  python bench/intsim_throughput.py --workdir=... --repeats=30 \
    --out=results/intsim_throughput.md

The process gets one CPU device per core (`sharding.cpu_device_per_core`), as `eval.py
--mode=int` does. The float model is the run's network with its trained weights and no
quantizers (`model.apply`, jitted, float32 NHWC input), run twice: on one device (XLA's
intra-op threads use the cores) and with the batch split over every device; the faster of the
two (by median) is the baseline every ratio is taken against. The emulator runs the exported
integer graph on uint8 images, split over every device as `Emulator` does by default, with MAC
path 'auto' (float32 where provably exact, else int) and 'int' (jax.lax int8/int16 operands,
preferred_element_type=int32), and 'int' once more on one device. Each computes the integer
outputs alone (`Emulator.outputs`, what the accelerator computes); 'auto' also runs as `eval.py
--mode=int` does, counting every accumulator's overflows and max |s| (`Emulator.__call__`). The
integer convolutions of 'int' run as the emulator picks them per layer (`conv_lowering('auto')`:
on a CPU, patches times an integer matrix for int8 operands below 16 input channels, else
`lax.conv_general_dilated`), and all as one or the other (patches is the lowering on a GPU,
whose XLA backend has no general integer convolution). Timings are interleaved (each contender
in turn, `repeats` rounds) and the median is reported, each call blocked until ready. Prints the
ratio emulator images/s ÷ float images/s, taken within each repetition, as its median,
interquartile range and the median's order-statistic interval (`bench/intervals.py`), from which
each target is read (issue 14's targets: >= 1.0 for 'auto', >= 0.9 for 'int' as the emulator
lowers it) and writes a Markdown note with date and machine.
"""

from __future__ import annotations

import datetime
import os
import shlex
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import intervals  # noqa: E402  (bench/ is the script's directory)
from absl import app, flags  # noqa: E402

_WORKDIR = flags.DEFINE_string("workdir", None, "A quantized run (train.py workdir).")
_BATCH = flags.DEFINE_integer("batch", 256, "Images per call.")
_REPEATS = flags.DEFINE_integer("repeats", 30, "Timed calls per contender (median reported).")
_OUT = flags.DEFINE_string("out", "", "Markdown output (default: print only).")
flags.mark_flags_as_required(["workdir"])


def main(argv):
  del argv
  from quantjax.train import sharding
  sharding.cpu_device_per_core()  # before JAX starts its backends
  import jax
  import numpy as np

  from quantjax.export import export_run, load_run
  from quantjax.intsim import Accelerator, Emulator
  from quantjax.intsim.evaluate import raw_split
  from quantjax.reports.machine import machine
  from quantjax.workdir import write_text_atomic

  exp, variables, _ = load_run(_WORKDIR.value)
  graph = export_run(exp, variables)
  images, _ = raw_split(exp.dataset, "test")
  images = images[: _BATCH.value]
  if len(images) < _BATCH.value:
    images = np.resize(images, (_BATCH.value, *images.shape[1:]))
  x = np.asarray(exp.dataset.normalise(images), np.float32)
  devices = jax.local_devices()
  float_vars = {k: v for k, v in variables.items() if k in ("params", "batch_stats")}
  float_fn = jax.jit(lambda v, x: exp.model.apply(v, x, train=False))
  contenders = {}
  mesh = sharding.make_mesh()
  for name, put_vars, put_x in (
      ("float, 1 device", jax.device_put(float_vars), jax.device_put(x)),
      (f"float, {len(devices)} devices", sharding.replicate(float_vars, mesh),
       jax.device_put(x, sharding.batch_sharding(mesh)))):
    if name.startswith("float, 1 ") or len(devices) > 1 and _BATCH.value % len(devices) == 0:
      contenders[name] = lambda v=put_vars, x=put_x: float_fn(v, x).block_until_ready()
  for mac, conv, count, on in (("auto", "auto", False, devices), ("auto", "auto", True, devices),
                               ("int", "auto", False, devices), ("int", "auto", False, devices[:1]),
                               ("int", "lax", False, devices), ("int", "patches", False, devices)):
    if on is not devices and len(devices) == 1:
      continue
    emulator = Emulator(graph, Accelerator(mac=mac), conv=conv, devices=on)
    chunks = emulator.place(images)

    def call(emulator=emulator, count=count, chunks=chunks):
      with jax.enable_x64(True):
        jax.block_until_ready([emulator.run_jax(c, count=count) for c in chunks])
    name = f"emulator ({mac})" if conv == "auto" else f"emulator ({mac}, {conv} conv)"
    name += ", with overflow and max-magnitude counts" if count else ""
    contenders[name + (", 1 device" if on is not devices else "")] = call
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
  baseline = min((name for name in median if name.startswith("float")), key=median.get)
  # Throughput ratio to the faster float within each repetition (every contender ran in turn),
  # so the machine's load moves both: its median and interquartile range are the figures.
  ratios = {name: [f / t for f, t in zip(times[baseline], ts, strict=True)]
            for name, ts in times.items()}
  quartiles = {name: statistics.quantiles(r, n=4) for name, r in ratios.items()}
  date = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
  command = shlex.join(["python", "bench/intsim_throughput.py", *sys.argv[1:]])
  lines = ["# Integer emulator throughput", "",
           f"Generated {date} on {machine()} by `{command}` (load average "
           f"{os.getloadavg()[0]:.1f} at the end: other jobs shared the machine).", "",
           f"Model: {exp.config.model} from `{_WORKDIR.value}`; batch {_BATCH.value}; median of "
           f"{_REPEATS.value} interleaved calls (ratios: per repetition); {len(devices)} local "
           f"devices (one per core); ratios against the faster float: **{baseline}**.", "",
           "A target is read from the interval of the median ratio (order statistics, "
           "`bench/intervals.py`): met or NOT met only when the whole interval says so, else "
           "undecided at this number of repetitions.", "",
           "| contender | ms / batch | images / s | ratio to float: median [IQR] | interval of "
           "the median | target |",
           "|---|---|---|---|---|---|"]
  targets = {"emulator (auto)": 1.0, "emulator (auto), with overflow and max-magnitude counts": 1.0,
             "emulator (int)": 0.9}
  for name in contenders:
    q1, q2, q3 = quartiles[name]
    lo, hi, coverage = intervals.median_interval(ratios[name])
    target = targets.get(name)
    verdict = "" if target is None else (
        f">= {target:g}: {intervals.verdict(lo, hi, at_least=target)}")
    lines.append(f"| {name} | {1e3 * median[name]:.2f} | {rate[name]:.0f} | "
                 f"{q2:.2f} [{q1:.2f}, {q3:.2f}] | {lo:.2f}-{hi:.2f} ({100 * coverage:.1f} %) | "
                 f"{verdict} |")
  for name, error in failed.items():
    lines.append(f"| {name} | failed on this backend: {error} | | | | |")
  text = "\n".join(lines) + "\n"
  print(text)
  if _OUT.value:
    write_text_atomic(_OUT.value, text)


if __name__ == "__main__":
  app.run(main)
