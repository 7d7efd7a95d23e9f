"""Training-loop efficiency: `train_and_evaluate`'s steps/s over its bare jitted step's.

  python bench/loop_efficiency.py                       # LeNet-5 W4A4 on mnist5k and float on
                                                        # Fashion-MNIST, host vs device input
  python bench/loop_efficiency.py --reps=5 --out=results/loop_efficiency.md

For each setting and input pipeline, one repetition runs the real loop (`train_and_evaluate`, no
evaluation during training) for --steps steps and reads its own logged steps/s (the log
intervals after the first, which holds compilation), then calls the same jitted train step back
to back on one resident batch for as many steps. The ratio loop / bare is the loop's efficiency:
1.0 means the input pipeline and the loop's bookkeeping cost nothing. Repetitions interleave the
pipelines so that the machine's load affects them alike; the table gives the median and the
spread (min-max) of the per-repetition ratios, and reads the target from the median's
order-statistic interval (`bench/intervals.py`): met or NOT met only when the whole interval says
so, else undecided at this number of repetitions.
"""

from __future__ import annotations

import datetime
import json
import os
import shlex
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import intervals  # noqa: E402  (bench/ is the script's directory)
import jax  # noqa: E402
from absl import app, flags, logging  # noqa: E402

from quantjax import train  # noqa: E402
from quantjax.reports.machine import machine  # noqa: E402
from quantjax.train import experiment, sharding, steps  # noqa: E402
from quantjax.train.loop import init_state  # noqa: E402
from quantjax.workdir import write_text_atomic  # noqa: E402

LOOP_TARGET = 0.90  # issue 14: the loop's steps/s over the bare step's
_STEPS = flags.DEFINE_integer("steps", 400, "Training steps per measurement.")
_LOG_EVERY = flags.DEFINE_integer("log_every", 50, "The loop's log interval (its steps/s).")
_REPS = flags.DEFINE_integer("reps", 3, "Interleaved repetitions.")
_OUT = flags.DEFINE_string("out", "", "Also write the table to this Markdown file.")

SETTINGS = {
    "LeNet-5 W4A4, mnist5k": ("configs.default", None),
    "LeNet-5 float, Fashion-MNIST": ("configs.fashion.lenet5", "float"),
}
PIPELINES = ("host", "device")


def _config(module: str, arg: str | None, pipeline: str, steps_: int):
  import importlib

  mod = importlib.import_module(module)
  config = mod.get_config(arg) if arg else mod.get_config()
  config.input_pipeline = pipeline
  config.tensorboard = False
  config.eval_every_epochs = 0.0
  config.log_every_steps = _LOG_EVERY.value
  config.checkpoint_every_steps = 10**9
  return config


def loop_rate(config, steps_: int) -> float:
  """The loop's own steps/s over its log intervals after the first (which compiles)."""
  exp = experiment.build(config)
  per_epoch = exp.dataset.num_examples("train") // config.batch_size
  config.num_epochs = steps_ / per_epoch
  with tempfile.TemporaryDirectory() as workdir:
    train.train_and_evaluate(config, workdir)
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
      rows = [json.loads(line) for line in f if "train/steps_per_sec" in line]
  rates = [r["train/steps_per_sec"] for r in rows[1:]]
  return statistics.median(rates)


def bare_rate(config, steps_: int) -> float:
  """The same jitted step called back to back on one resident batch."""
  exp = experiment.build(config)
  mesh = sharding.make_mesh(config.get("num_devices", 0))
  batch_sh, rep = sharding.batch_sharding(mesh), sharding.replicated(mesh)
  per_epoch = exp.dataset.num_examples("train") // config.batch_size
  batch = next(exp.dataset.train_batches(batch_size=config.batch_size, seed=0, augment="none"))
  state = jax.device_put(init_state(exp, config, batch, per_epoch, resuming=False), rep)
  step = jax.jit(steps.make_train_step(exp.model, exp.plan, exp.num_classes, config.seed),
                 in_shardings=(rep, batch_sh), out_shardings=(rep, rep),
                 donate_argnames=("state",))
  batch = jax.device_put(batch, batch_sh)
  for _ in range(5):
    state, metrics = step(state, batch)
  jax.block_until_ready(metrics)
  start = time.perf_counter()
  for _ in range(steps_):
    state, metrics = step(state, batch)
  jax.block_until_ready(metrics)
  return steps_ / (time.perf_counter() - start)


def main(argv):
  del argv
  results = {name: {p: [] for p in PIPELINES} for name in SETTINGS}
  for rep in range(_REPS.value):
    for name, (module, arg) in SETTINGS.items():
      for pipeline in PIPELINES:
        config = _config(module, arg, pipeline, _STEPS.value)
        loop = loop_rate(config, _STEPS.value)
        bare = bare_rate(config, _STEPS.value)
        results[name][pipeline].append((loop, bare))
        print(f"rep {rep} {name} {pipeline}: loop {loop:.1f} steps/s, bare {bare:.1f}, "
              f"ratio {loop / bare:.2f}", flush=True)
  lines = [
      "# Training-loop efficiency: train_and_evaluate steps/s over the bare jitted step's", "",
      f"Generated by `{shlex.join(['python', 'bench/loop_efficiency.py', *sys.argv[1:]])}` on "
      f"{datetime.date.today().isoformat()}, {machine()}.", "",
      f"{_REPS.value} interleaved repetitions of {_STEPS.value} steps, batch 128. Target (issue "
      f"14): >= {LOOP_TARGET:.2f}.", "",
      "| setting | input pipeline | loop steps/s (median) | bare steps/s (median) | "
      f"loop / bare: median (min-max) | interval of the median | >= {LOOP_TARGET:.2f} |",
      "|---|---|---|---|---|---|---|"]
  for name in SETTINGS:
    for pipeline in PIPELINES:
      pairs = results[name][pipeline]
      ratios = [loop / bare for loop, bare in pairs]
      lo, hi, coverage = intervals.median_interval(ratios)
      lines.append(f"| {name} | {pipeline} | {statistics.median(p[0] for p in pairs):.1f} | "
                   f"{statistics.median(p[1] for p in pairs):.1f} | "
                   f"{statistics.median(ratios):.2f} ({min(ratios):.2f}-{max(ratios):.2f}) | "
                   f"{lo:.2f}-{hi:.2f} ({100 * coverage:.1f} %) | "
                   f"{intervals.verdict(lo, hi, at_least=LOOP_TARGET)} |")
  text = "\n".join(lines) + "\n"
  print(text)
  if _OUT.value:
    write_text_atomic(_OUT.value, text)


if __name__ == "__main__":
  logging.set_verbosity(logging.WARNING)
  app.run(main)
