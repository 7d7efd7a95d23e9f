"""Training on a CPU: one device per core against one device (issue 14, target 2).

  python bench/cpu_devices.py                      # -> printed
  python bench/cpu_devices.py --out=results/cpu_devices.md

XLA's CPU backend runs each convolution on one core, so a training step on one CPU device leaves
the other cores mostly idle. `XLA_FLAGS=--xla_force_host_platform_device_count=<cores>` gives
the backend one device per core, and `train.py`, which shards every batch over the local devices
(`quantjax.train.sharding`), then computes each device's share on its own core.

For each setting, `--reps` interleaved repetitions each run `train.py` twice in fresh processes,
with one device and with one per core, for about `--steps` steps, and read the loop's own logged
steps/s (the log intervals after the first, which holds compilation; their median). The ratio
per repetition is per-core over one device; the table gives its median and range.
"""

from __future__ import annotations

import datetime
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile

from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from quantjax.reports.machine import machine  # noqa: E402
from quantjax.train.sharding import CPU_DEVICE_COUNT_FLAG, cpu_cores  # noqa: E402
from quantjax.workdir import write_text_atomic  # noqa: E402

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# name -> (config, overrides, training images per epoch, batch size)
SETTINGS = {
    "lenet5-mnist5k-w4a4": ("configs/default.py", [], 3500, 128),
    "lenet5-fashion-float": ("configs/fashion/lenet5.py:float", [], 54000, 128),
    "sequential-fashion-float": ("configs/fashion/lenet5.py:float",
                                 ["--config.model=sequential"], 54000, 128),
    "resnet20-fashion-float": ("configs/fashion/resnet20.py:float", [], 54000, 128),
    # XLA's own kernel gradient (conv_kernel_grad='xla'): what the split gained before the taps
    "resnet20-fashion-float-xla-grad": ("configs/fashion/resnet20.py:float",
                                        ["--config.conv_kernel_grad=xla"], 54000, 128),
}

_SETTINGS = flags.DEFINE_list("settings", list(SETTINGS), "Settings to run.")
_STEPS = flags.DEFINE_integer("steps", 120, "Training steps per run (about).")
_LOG_EVERY = flags.DEFINE_integer("log_every", 20, "The loop's log interval (its steps/s).")
_REPS = flags.DEFINE_integer("reps", 3, "Interleaved repetitions.")
_OUT = flags.DEFINE_string("out", "", "Also write the table to this Markdown file.")


def steps_per_second(setting: str, devices: int, workdir: str) -> float:
  """The loop's median logged steps/s after its first log interval, in a fresh process."""
  config, overrides, images, batch = SETTINGS[setting]
  epochs = _STEPS.value * batch / images
  cmd = [sys.executable, "train.py", f"--config={config}", f"--workdir={workdir}", *overrides,
         f"--config.num_epochs={epochs:.6f}", "--config.warmup_epochs=0",
         f"--config.log_every_steps={_LOG_EVERY.value}", "--config.eval_every_epochs=0",
         "--config.checkpoint_every_steps=1000000", "--config.tensorboard=False"]
  kept = [f for f in os.environ.get("XLA_FLAGS", "").split()
          if not f.startswith(CPU_DEVICE_COUNT_FLAG)]
  env = {**os.environ, "XLA_FLAGS": " ".join([*kept, f"{CPU_DEVICE_COUNT_FLAG}={devices}"])}
  done = subprocess.run(cmd, cwd=_ROOT, env=env, capture_output=True, text=True)
  if done.returncode:
    last = (done.stderr.strip().splitlines() or ["no output"])[-1]
    raise SystemExit(f"{setting} on {devices} device(s) failed (status {done.returncode}): "
                     f"{last}")
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    rates = [row["train/steps_per_sec"] for row in map(json.loads, f)
             if "train/steps_per_sec" in row]
  if len(rates) < 2:
    raise SystemExit(f"{setting}: {len(rates)} logged intervals; raise --steps")
  return statistics.median(rates[1:])


def main(argv):
  del argv
  unknown = set(_SETTINGS.value) - set(SETTINGS)
  if unknown:
    raise app.UsageError(f"--settings {sorted(unknown)} not valid; choose from "
                         f"{', '.join(SETTINGS)}")
  n = cpu_cores()
  command = shlex.join(["python", "bench/cpu_devices.py", *sys.argv[1:]])
  rows = []
  for setting in _SETTINGS.value:
    one, per_core, ratios = [], [], []
    for rep in range(_REPS.value):
      with tempfile.TemporaryDirectory() as tmp:
        a = steps_per_second(setting, 1, os.path.join(tmp, "one"))
        b = steps_per_second(setting, n, os.path.join(tmp, "per_core"))
      one.append(a)
      per_core.append(b)
      ratios.append(b / a)
      print(f"{setting} rep {rep}: {a:.2f} steps/s on 1 device, {b:.2f} on {n}: {b / a:.2f}x",
            flush=True)
    rows.append((setting, statistics.median(one), statistics.median(per_core),
                 statistics.median(ratios), min(ratios), max(ratios)))
  lines = [
      f"# Training on a CPU: {n} devices (one per core) against one", "",
      f"Generated {datetime.date.today().isoformat()} on {machine()} by `{command}`: "
      f"{_REPS.value} interleaved repetitions of about {_STEPS.value} steps each (batch 128), "
      "each run in a fresh `train.py` process; steps/s is the loop's own, after its first log "
      "interval.", "",
      f"| setting | steps/s, 1 device | steps/s, {n} devices | ratio (median) | range |",
      "|---|---|---|---|---|"]
  for setting, a, b, ratio, lo, hi in rows:
    lines.append(f"| {setting} | {a:.2f} | {b:.2f} | {ratio:.2f}x | {lo:.2f}-{hi:.2f} |")
  text = "\n".join(lines) + "\n"
  print(text)
  if _OUT.value:
    write_text_atomic(_OUT.value, text)


if __name__ == "__main__":
  app.run(main)
