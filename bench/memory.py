"""Peak host memory of quantization-aware training, integer emulation and the fixed-point search,
as ratios to their float counterparts; every job runs in its own Python process.

  python bench/memory.py --out=results/memory.md

Training: each variant trains LeNet-5 on mnist5k for `--epochs` (the default config's batch,
optimizer and evaluation), against the float run. Inference: the trained uniform W8A8 run
evaluated on the test split by the integer emulator (`eval.py --mode=int`'s path: export, emulate,
compare with fake-quant) against the float model's evaluation of the float run. Search: Goyal et
al.'s fixed-point search (configs/ptq_fixedpoint.py) on the float run, against float training.
A job's figure is its process's peak resident set size (`ru_maxrss`): interpreter, JAX, XLA's
compiled code and the dataset included, what a user's run holds. The integer evaluation and the
search get one CPU device per core, as `eval.py --mode=int` and `quantjax.ptq.run` give their
process; training and float evaluation one device, as train.py and eval.py run them. Issue 14's
targets: QAT at most 1.15x float training, the emulator's evaluation at most 1.2x float
evaluation.

What the quantized jobs add is compilation. XLA's CPU backend compiles elementwise fusions with
its MLIR fusion emitters, whose compilation holds memory for every fusion until the program is
built, and a quantized step has many more fusions than the float one. With `--older_emitters`
(the default) every training and evaluation job runs a second time with
`XLA_FLAGS=--xla_cpu_use_fusion_emitters=false` (XLA's older LLVM emitters), float and quantized
alike, and their ratios are given beside: the difference between the two tables is the share of
the fusion emitters' compilation.

A third table cuts each training job into its phases (dataset, quantizer initialisation, the
train step's compilation, its execution) and gives each phase's own high-water mark, so what sets
the peak, and by how much a quantized job's phase exceeds float's, is read off, not guessed.
"""

from __future__ import annotations

import datetime
import json
import os
import statistics
import subprocess
import sys
import tempfile

from absl import app, flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from quantjax.reports.machine import machine  # noqa: E402
from quantjax.workdir import write_text_atomic  # noqa: E402

_EPOCHS = flags.DEFINE_float("epochs", 2.0, "Training epochs per variant.")
_REPS = flags.DEFINE_integer("reps", 3, "Repetitions of every job (each in a fresh process); "
                             "the tables give the median and the range.")
_OUT = flags.DEFINE_string("out", "", "Markdown output (optional).")
_PHASE_STEPS = flags.DEFINE_integer(
    "phase_steps", 50, "Training steps of the phases table (0: no phases table). Linux only.")
_OLDER = flags.DEFINE_bool(
    "older_emitters", True, "Also run every training and evaluation job with XLA's older CPU "
    "emitters (XLA_FLAGS=--xla_cpu_use_fusion_emitters=false), as a second table.")

OLDER_EMITTERS = "--xla_cpu_use_fusion_emitters=false"

# Each training variant: the accuracy table's row whose middle-layer quantizers it uses.
TRAIN_VARIANTS = ("uniform/W8A8", "uniform/W4A4", "esb/W4A4-k2", "nuuq/N4", "liss/W4A4",
                  "log/W4A4")

_PRELUDE = f"""
import json, resource, sys
sys.path.insert(0, {ROOT!r})
sys.path.insert(0, {os.path.join(ROOT, "bench")!r})
from absl import logging
logging.set_verbosity(logging.ERROR)
{{setup}}
def peak():
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
import jax, jax.numpy as jnp
import quantjax.train, quantjax.intsim, quantjax.export, quantjax.ptq
jnp.zeros(1).block_until_ready()
imported = peak()  # the interpreter, JAX's runtime and quantjax: alike in every job
"""

# A training job's config: the float run's (row None) or the accuracy table's row.
_CONFIG = """
import accuracy_table
row = {row!r}
config = accuracy_table.make_config(None, 0, "", False)
if row is not None:
  config = accuracy_table.make_config(
      next(r for r in accuracy_table.sweep() if r.name == row), 0, "", False)
  config.require_init_from = False  # memory, not accuracy: train from scratch
"""

_TRAIN = _CONFIG + """
from quantjax import train
config.num_epochs = {epochs}
config.eval_every_epochs = 0.0
summary = train.train_and_evaluate(config, {workdir!r})
print(json.dumps({{"peak_mib": peak(), "imported_mib": imported,
                  "accuracy": summary["accuracy"]["test"]}}))
"""

# The training job cut into its phases, each phase's own high-water mark: the kernel's peak resident
# set (VmHWM) is reset between phases (`/proc/self/clear_refs`, Linux), so a phase's mark is the
# most it held, whatever the phases before it held. The steps are the loop's own functions, called
# directly: the quantizers' initialisation (one jitted program), the train step's lowering and
# compilation (ahead of time, as `jax.jit` does at the first call), and its execution, inside
# `host_memory.released_after_compiles()` as in `train_and_evaluate`: the memory a compilation
# freed goes back to the OS after it, so a phase does not stack on what the one before freed.
_PHASES = _CONFIG + """
from quantjax.train import experiment, loop, steps
def status(field):
  with open("/proc/self/status") as f:
    return next(int(line.split()[1]) / 1024 for line in f if line.startswith(field))
def mark(phases, name, start):
  phases[name] = {{"start": start, "peak": status("VmHWM"), "end": status("VmRSS")}}
  with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # a fresh high-water mark for the next phase
  return status("VmRSS")
from quantjax import host_memory
released = host_memory.released_after_compiles()  # as train_and_evaluate runs the phases
released.__enter__()
exp = experiment.build(config)
phases = {{}}
first = next(exp.dataset.train_batches(batch_size=config.batch_size, seed=0, augment="none"))
now = mark(phases, "data", imported)
state = loop.init_state(exp, config, first,
                        exp.dataset.num_examples("train") // config.batch_size)
jax.block_until_ready(state)
now = mark(phases, "init", now)
step = jax.jit(steps.make_train_step(
    exp.model, exp.plan, exp.num_classes, config.seed,
    aux_loss_weight=float(config.get("dda", {{}}).get("weight", 0.0))), donate_argnames=("state",))
compiled = step.lower(state, first).compile()
now = mark(phases, "compile", now)
for _ in range({steps}):
  state, metrics = compiled(state, first)
jax.block_until_ready(metrics)
mark(phases, "steps", now)
# ru_maxrss follows the reset mark: the job's peak is its phases' highest.
print(json.dumps({{"phases": phases, "imported_mib": imported,
                  "peak_mib": max(p["peak"] for p in phases.values())}}))
"""

PHASES = ("data", "init", "compile", "steps")
PHASE_NAMES = {"data": "dataset", "init": "quantizer init", "compile": "train-step compile",
               "steps": "{steps} train steps"}

_EVAL_FLOAT = """
from quantjax.train import evaluate
result = evaluate.evaluate_workdir({workdir!r}, split="test", mode="float",
                                   output={output!r})
print(json.dumps({{"peak_mib": peak(), "imported_mib": imported,
                  "accuracy": result["accuracy"]}}))
"""

_EVAL_INT = """
from quantjax.intsim.evaluate import evaluate_int
result = evaluate_int({workdir!r}, split="test", output={output!r})
print(json.dumps({{"peak_mib": peak(), "imported_mib": imported,
                  "accuracy": result["accuracy"]}}))
"""

_PTQ = """
import importlib
from quantjax.ptq import run
config = importlib.import_module("configs.ptq_fixedpoint").get_config()
config.init_from = {init_from!r}
summary = run(config, {workdir!r})
print(json.dumps({{"peak_mib": peak(), "imported_mib": imported,
                  "accuracy": summary["accuracy"]["test"]}}))
"""


# What `eval.py --mode=int` and `quantjax.ptq.run` do before JAX starts its backends.
_PER_CORE = "from quantjax.train import sharding; sharding.cpu_device_per_core()"


def measure(body: str, per_core: bool = False, xla_flags: str = "", **fields) -> dict[str, float]:
  """Runs `body` (formatted with `fields`) in a fresh interpreter; its printed peak and accuracy.
  `per_core`: the process gets one CPU device per core, as the job's own command gives it.
  `xla_flags`: added to the process's XLA_FLAGS."""
  code = _PRELUDE.format(setup=_PER_CORE if per_core else "") + body.format(**fields)
  env = dict(os.environ)
  if xla_flags:
    env["XLA_FLAGS"] = f"{env.get('XLA_FLAGS', '')} {xla_flags}".strip()
  out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True,
                       cwd=ROOT, env=env)
  return json.loads(out.stdout.strip().splitlines()[-1])


def _spread(values: list[float], fmt: str) -> str:
  """The median, and the range when there are several values."""
  mid = format(statistics.median(values), fmt)
  if len(values) == 1:
    return mid
  return f"{mid} [{format(min(values), fmt)}-{format(max(values), fmt)}]"


def _table(results: dict[str, list[dict]], base: str, target: float | None) -> list[str]:
  """Peak, its ratio to `base`'s against `target`, and what the job added above its imports.

  Each job ran once per repetition; the ratio is taken within a repetition (rep i of the job over
  rep i of `base`), then its median and range are shown; the verdict reads the median.
  """
  refs = results[base]
  verdict = f"within {target:g}x" if target else ""
  lines = [f"| job | peak MiB | ratio | {verdict} | above the imports: MiB (ratio) |",
           "|---|---|---|---|---|"]
  for name, runs in results.items():
    ratios = [r["peak_mib"] / ref["peak_mib"] for r, ref in zip(runs, refs, strict=True)]
    works = [r["peak_mib"] - r["imported_mib"] for r in runs]
    work_ratios = [w / (ref["peak_mib"] - ref["imported_mib"])
                   for w, ref in zip(works, refs, strict=True)]
    median = statistics.median(ratios)
    ok = "" if name == base or target is None else ("yes" if median <= target else "NO")
    lines.append(f"| {name} | {_spread([r['peak_mib'] for r in runs], '.0f')} | "
                 f"{_spread(ratios, '.2f')} | {ok} | {_spread(works, '.0f')} "
                 f"({statistics.median(work_ratios):.2f}) |")
  return lines


def measure_rep(tmp: str, rep: int, train: dict, infer: dict, xla_flags: str = "") -> dict:
  """One repetition of the training and evaluation jobs (their peaks appended to `train` and
  `infer`), every process with `xla_flags`; returns the training workdirs by variant."""
  tag = "older" if xla_flags else "default"
  runs = {name: os.path.join(tmp, f"{rep}", tag, name.replace("/", "_"))
          for name in ("float", *TRAIN_VARIANTS)}
  for name, workdir in runs.items():
    row = None if name == "float" else name
    result = measure(_TRAIN, row=row, epochs=_EPOCHS.value, workdir=workdir,
                     xla_flags=xla_flags)
    train.setdefault(f"train {name}", []).append(result)
    print(f"rep {rep} ({tag} emitters) train {name}: {result['peak_mib']:.0f} MiB", flush=True)
  for name, result in (
      ("evaluate float (jitted float model)", measure(
          _EVAL_FLOAT, workdir=runs["float"], output=os.path.join(tmp, "float.json"),
          xla_flags=xla_flags)),
      ("integer emulator, uniform W8A8", measure(
          _EVAL_INT, per_core=True, workdir=runs["uniform/W8A8"],
          output=os.path.join(tmp, "int.json"), xla_flags=xla_flags))):
    infer.setdefault(name, []).append(result)
  return runs


def measure_phases(train_phases: dict[str, list[dict]]) -> None:
  """Each training job once more, cut into phases (`_PHASES`), appended to `train_phases`."""
  for name in ("float", *TRAIN_VARIANTS):
    result = measure(_PHASES, row=None if name == "float" else name, steps=_PHASE_STEPS.value)
    train_phases.setdefault(f"train {name}", []).append(result)
    print(f"phases of train {name}: {result['phases']}", flush=True)


def _phases_table(results: dict[str, list[dict]], base: str) -> list[str]:
  """Per job and phase: its own peak, and what it held above the memory at its start (MiB)."""
  names = [PHASE_NAMES[p].format(steps=_PHASE_STEPS.value) for p in PHASES]
  lines = ["| job | " + " | ".join(f"{n}: peak (+ above its start)" for n in names)
           + " | peak phase | whole job's peak, ratio |",
           "|---|" + "---|" * (len(PHASES) + 2)]
  refs = results[base]
  for name, runs in results.items():
    cells = []
    for p in PHASES:
      peaks = [r["phases"][p]["peak"] for r in runs]
      added = [r["phases"][p]["peak"] - r["phases"][p]["start"] for r in runs]
      cells.append(f"{statistics.median(peaks):.0f} (+{statistics.median(added):.0f})")
    top = statistics.mode(max(PHASES, key=lambda p, r=r: r["phases"][p]["peak"]) for r in runs)
    ratios = [r["peak_mib"] / ref["peak_mib"] for r, ref in zip(runs, refs, strict=True)]
    top_name = PHASE_NAMES[top].format(steps=_PHASE_STEPS.value)
    lines.append(f"| {name} | " + " | ".join(cells) + f" | {top_name}"
                 f" | {statistics.median([r['peak_mib'] for r in runs]):.0f}, "
                 f"{_spread(ratios, '.2f')} |")
  return lines


def main(argv):
  del argv
  train: dict[str, list[dict]] = {}
  infer: dict[str, list[dict]] = {}
  search: dict[str, list[dict]] = {}
  train_older: dict[str, list[dict]] = {}
  infer_older: dict[str, list[dict]] = {}
  train_phases: dict[str, list[dict]] = {}
  with tempfile.TemporaryDirectory() as tmp:
    for rep in range(_REPS.value):  # every job once per repetition: ratios pair jobs of one rep
      runs = measure_rep(tmp, rep, train, infer)
      search.setdefault("train float", []).append(train["train float"][-1])
      search.setdefault("fixed-point search (LeNet-5)", []).append(measure(
          _PTQ, per_core=True, init_from=runs["float"],
          workdir=os.path.join(tmp, f"{rep}", "fxp")))
      if _OLDER.value:
        measure_rep(tmp, rep, train_older, infer_older, xla_flags=OLDER_EMITTERS)
      if _PHASE_STEPS.value:
        measure_phases(train_phases)
      print(f"rep {rep}: inference {infer}, search {search}", flush=True)
  phases = []
  if _PHASE_STEPS.value:
    phases = [
        "", "## What the training peak is made of", "",
        "Each training job once more per repetition, in its own process, cut into its phases "
        "(the loop's own functions called in turn: `bench/memory.py`'s `_PHASES`). A phase's "
        "peak is the most the process held during it (the kernel's high-water mark, reset "
        "between phases); '+' is that peak above the memory the process held when the phase "
        "began: what the phase itself needed at its height, freed or not. As in the training "
        "loop, the memory a compilation freed is handed back to the OS after it "
        "(`quantjax.host_memory`), so a phase does not stack on what an earlier one no longer "
        "uses. Medians over the repetitions; the "
        "last column is the whole job's peak and its ratio to float's (these jobs do not "
        "evaluate, so their peaks sit below the table above).", "",
        *_phases_table(train_phases, "train float")]
  older = []
  if _OLDER.value:
    older = [
        "", "## The same jobs with XLA's older CPU emitters", "",
        f"Every process above run again with `XLA_FLAGS={OLDER_EMITTERS}`, float and quantized "
        "alike (no project setting changes this; XLA's own default is the fusion emitters). "
        "Ratios are to the float job with the same emitters. Where these ratios are lower, the "
        "difference is what the fusion emitters' compilation holds at the peak. Speed is not "
        "measured here: `bench/step_time.py --older_emitters` times what they cost a training "
        "step (`results/step_time_older_emitters.md`).", "",
        "Training:", "", *_table(train_older, "train float", 1.15), "",
        "Evaluation:", "", *_table(infer_older, "evaluate float (jitted float model)", 1.2)]
  lines = [
      "# Peak host memory against float (LeNet-5, mnist5k)", "",
      f"Generated by `python bench/memory.py --epochs={_EPOCHS.value:g} --reps={_REPS.value}"
      f"{'' if _OLDER.value else ' --noolder_emitters'}"
      f"{'' if _PHASE_STEPS.value == 50 else f' --phase_steps={_PHASE_STEPS.value}'}` on "
      f"{datetime.date.today().isoformat()}, {machine()}. Each job in its own process, "
      f"{_REPS.value} times (the median, and the range in brackets); peak "
      "resident set size of that process (interpreter, JAX, compiled code and dataset "
      "included). 'Above the imports' subtracts the peak after importing JAX and quantjax and "
      "running one op (the same in every job), leaving what the job itself added: data, "
      "compilation, buffers. The integer evaluation and the search run with one CPU device per "
      "core, as their commands do; training and float evaluation on one device.", "",
      f"Training for {_EPOCHS.value:g} epochs (default config: batch 128, Adam), ratio to float "
      "training (issue 14's target: at most 1.15x):", "",
      *_table(train, "train float", 1.15), "",
      "Evaluation of the 1,000 test digits, ratio to the float model's evaluation (target: at "
      "most 1.2x; the integer job also runs the fake-quant model, as `eval.py --mode=int` does, "
      "to report their agreement):", "",
      *_table(infer, "evaluate float (jitted float model)", 1.2), "",
      "Goyal et al.'s fixed-point search on the float run (validation split), ratio to float "
      "training (no target):", "", *_table(search, "train float", None), *phases, *older]
  text = "\n".join(lines) + "\n"
  print(text)
  if _OUT.value:
    write_text_atomic(_OUT.value, text)


if __name__ == "__main__":
  app.run(main)
