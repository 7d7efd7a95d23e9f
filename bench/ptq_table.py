"""Post-training quantization, Goyal et al.'s fixed-point search and MXQN: mnist5k or Fashion-MNIST.

  python bench/ptq_table.py                      # -> results/ptq.md, ptq.json, fxp_bits.png
  python bench/ptq_table.py --dataset=fashion_mnist  # the Sequential net on Fashion-MNIST (issue
                                                 # 10) -> results/ptq_fashion.md, .json, .png

On Fashion-MNIST the float run is `configs/fashion/lenet5.py`'s (Adam 3e-3, cosine, random shifts
and flips) for the model, and every search sees the 6,000 validation images; its targets are
issue 10's: at most 1 % relative test loss with at least the paper's MNIST reductions against
all-8-bit (62.7 % memory, 84.9 % multiplication cost).

For LeNet-5 and the 14-conv "Sequential" network (METHODS.md §4) it trains a float run (or reuses
the one in --workdir), then runs, each as `python train.py` from that float checkpoint:

- `configs/ptq_fixedpoint.py` (layer-wise fixed-point search on the validation split), with the
  paper's accuracy criterion and with `criterion=agreement` (a changed prediction is a loss) at
  T = 0.5 % and 1 %;
- `configs/ptq_mxqn.py` at W8 with mixed 8-bit activations, W8 with mixed 4-5-bit activations
  and W6 with mixed 4-5-bit activations (5 bits, lowered to 4 where the SQNR stays >= the floor);
  W6 with 3-bit activations chosen by SQNR, and the same with every activation forced to fixed
  point, to show what the log choice is worth.

Every run lives in `--workdir/<name>` and is reused when its summary.json exists, so the script
resumes where it stopped (delete a run's folder to redo it). Accuracy is the test split's; the
searches see only the validation split. Wall times are measured on whatever else runs on the
machine, so the CPU time of each run is reported beside them.
"""

from __future__ import annotations

import datetime
import json
import os
import resource
import subprocess
import sys
import time
from typing import NamedTuple

import numpy as np
from absl import app, flags

from quantjax.reports import progress
from quantjax.reports.machine import machine
from quantjax.workdir import write_text_atomic

_DATASET = flags.DEFINE_enum("dataset", "mnist5k", ["mnist5k", "fashion_mnist"],
                             "mnist5k (quick; 500 validation digits) or fashion_mnist (issue 10: "
                             "6,000 validation images, the paper's MNIST reductions as targets).")
_WORKDIR = flags.DEFINE_string("workdir", "", "Where the runs live (reused); default runs/ptq "
                               "(mnist5k) or runs/ptq_fashion.")
_OUT_DIR = flags.DEFINE_string("out_dir", "results",
                               "Where ptq[_fashion].md, .json and fxp_bits[_fashion].png go.")
_MODELS = flags.DEFINE_list("models", [], "Models to run; default lenet5,sequential (mnist5k) "
                            "or sequential (fashion_mnist: LeNet-5's PTQ rows are in "
                            "results/fashion.md).")
_SEQ_EPOCHS = flags.DEFINE_float("sequential_epochs", 30.0,
                                 "Float training epochs of the Sequential net (LeNet-5: 80).")
_ACT_SQNR = flags.DEFINE_float("act_sqnr_db", 20.0,
                               "MXQN 4-5-bit runs: an activation drops to 4 bits while its SQNR "
                               "stays at or above this.")

TIMING = "bench_timing.json"


class Profile(NamedTuple):
  """What differs between the datasets: configs, data wording, targets and output names."""

  float_config: str  # the float run's config (its --config argument)
  fixedpoint_config: str
  mxqn_config: str
  workdir: str
  suffix: str  # output names: ptq{suffix}.md, ptq{suffix}.json, fxp_bits{suffix}.png
  models: tuple[str, ...]
  data: str  # what the searches see and what accuracy is measured on
  targets: str  # whose targets
  memory_target: float  # minimum reductions against all-8-bit, and the maximum relative loss
  mult_target: float
  loss_target: float = 0.01


PROFILES = {
    "mnist5k": Profile(
        "configs/float.py", "configs/ptq_fixedpoint.py", "configs/ptq_mxqn.py", "runs/ptq", "",
        ("lenet5", "sequential"),
        "mnist5k: searches and calibration use the 500 validation digits only; accuracy is on "
        "the 1,000 test digits (one digit is 0.1 points).", "issue 4", 0.5, 0.7),
    "fashion_mnist": Profile(
        "configs/fashion/lenet5.py:float", "configs/fashion/lenet5.py:ptq_fixedpoint",
        "configs/fashion/lenet5.py:ptq_mxqn", "runs/ptq_fashion", "_fashion", ("sequential",),
        "Fashion-MNIST: searches and calibration use the 6,000 validation images (carved from "
        "train, stratified); accuracy is on the 10,000 test images (one image is 0.01 points).",
        "issue 10: the paper's MNIST figures", 0.627, 0.849),
}


def profile() -> Profile:
  return PROFILES[_DATASET.value]


def workdir_root() -> str:
  return _WORKDIR.value or profile().workdir


def models() -> list[str]:
  return _MODELS.value or list(profile().models)


def runs(model: str) -> list[tuple[str, str, list[str]]]:
  """(name, config, overrides) of every run for `model`, float first."""
  float_overrides = [f"--config.num_epochs={_SEQ_EPOCHS.value}"] if model == "sequential" else []
  init = f"--config.init_from={os.path.join(workdir_root(), f'float_{model}')}"
  prof = profile()
  mixed45 = ["--config.ptq.act_bits=5", "--config.ptq.min_act_bits=4",
             f"--config.ptq.act_sqnr_db={_ACT_SQNR.value}"]
  return [
      ("float", prof.float_config, float_overrides),
      ("fixedpoint", prof.fixedpoint_config, [init]),
      ("fixedpoint_agree", prof.fixedpoint_config, [init, "--config.ptq.criterion=agreement"]),
      ("fixedpoint_agree_t1", prof.fixedpoint_config,
       [init, "--config.ptq.criterion=agreement", "--config.ptq.threshold=0.01"]),
      ("mxqn_w8a8", prof.mxqn_config, [init]),
      ("mxqn_w8a45", prof.mxqn_config, [init, *mixed45]),
      ("mxqn_w6a45", prof.mxqn_config, [init, "--config.ptq.weight_bits=6", *mixed45]),
      # 3-bit activations, where log's SQNR can beat fixed point's, and the same forced fixed.
      ("mxqn_w6a3", prof.mxqn_config, [init, "--config.ptq.weight_bits=6",
                                            "--config.ptq.act_bits=3"]),
      ("mxqn_w6a3_fixed", prof.mxqn_config, [init, "--config.ptq.weight_bits=6",
                                                  "--config.ptq.act_bits=3",
                                                  "--config.ptq.force=.*=fixed"]),
  ]


def run_one(model: str, name: str, config: str, overrides: list[str]) -> dict:
  """Runs (or reuses) one workdir; returns its summary plus the wall and CPU seconds."""
  workdir = os.path.join(workdir_root(), f"{name}_{model}")
  cmd = [sys.executable, "train.py", f"--config={config}", f"--workdir={workdir}",
         f"--config.model={model}", "--config.tensorboard=False", *overrides]
  timing_path = os.path.join(workdir, TIMING)
  if not os.path.exists(os.path.join(workdir, "summary.json")):
    progress.write("running: " + " ".join(cmd), sys.stdout)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    if done.returncode:  # e.g. stopped by a signal: its checkpoint is kept, the table resumes
      raise SystemExit(f"ptq_table: run {workdir} exited with {done.returncode} (a signal or "
                       f"an error: rerun it alone to see it); rerun this command to resume")
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    timing = {"wall_seconds": time.perf_counter() - start, "cpu_seconds": cpu,
              "command": " ".join(cmd[1:]), "date": datetime.date.today().isoformat()}
    write_text_atomic(timing_path, json.dumps(timing, indent=2))
  else:
    progress.write(f"reusing: {workdir}", sys.stdout)
  timing = {}
  if os.path.exists(timing_path):
    with open(timing_path) as f:
      timing = json.load(f)
  with open(os.path.join(workdir, "summary.json")) as f:
    summary = json.load(f)
  report = {}
  if os.path.exists(os.path.join(workdir, "ptq_report.json")):
    with open(os.path.join(workdir, "ptq_report.json")) as f:
      report = json.load(f)
  with open(os.path.join(workdir, "config.json")) as f:
    quant = json.load(f).get("quant") or {}
  return {"model": model, "name": name, "workdir": workdir, "summary": summary,
          "report": report, "rules": quant.get("rules") or [], "timing": timing}


def _row(r: dict, fp: dict) -> dict:
  s = r["summary"]
  # Float runs trained before summary.json carried the cost model have none (and need none).
  cost = s.get("cost") or {"reduction_vs_8bit": {}, "total": {}}
  red = cost["reduction_vs_8bit"]
  test, ftest = s["accuracy"]["test"], fp["summary"]["accuracy"]["test"]
  return {
      "model": r["model"], "run": r["name"], "test_accuracy": test,
      "validation_accuracy": s["accuracy"]["validation"], "float_test_accuracy": ftest,
      "relative_loss": (ftest - test) / ftest, "points_below_float": 100 * (ftest - test),
      "memory_reduction": red.get("memory_bits"), "mult_cost_reduction": red.get("mult_cost"),
      "bops_reduction": red.get("bops"), "param_bytes": cost["total"].get("param_bytes"),
      "search_seconds": (s.get("ptq") or {}).get("search_seconds"),
      "search_cpu_seconds": (s.get("ptq") or {}).get("search_cpu_seconds"),
      "ptq_seconds": (s.get("ptq") or {}).get("seconds"),
      "evaluations": (s.get("ptq") or {}).get("evaluations"),
      "compilations": (s.get("ptq") or {}).get("compilations"),
      "wall_seconds": r["timing"].get("wall_seconds"),
      "cpu_seconds": r["timing"].get("cpu_seconds"),
      "command": r["timing"].get("command"),
  }


def _fmt(v, spec=".1f", scale=1.0, suffix=""):
  return "" if v is None else f"{scale * v:{spec}}{suffix}"


def _bits_table(r: dict) -> list[str]:
  lines = [f"Fixed-point formats chosen by {r['name']} for {r['model']} (b bits, F fractional "
           "bits):", "",
           "| layer | weights (b, F) | biases (b, F) | activations (b, F) |", "|---|---|---|---|"]
  for rule in r["rules"]:
    cells = [f"({rule[c]['bits']}, {rule[c]['fractional_bits']})" if rule.get(c) else "float"
             for c in ("weight", "bias", "output")]
    lines.append(f"| {rule['pattern'].replace(chr(92), '')} | {' | '.join(cells)} |")
  return lines + [""]


def _mxqn_table(r: dict) -> list[str]:
  lines = [f"MXQN {r['name']} on {r['model']}: per-layer SQNR on the calibration images "
           "(validation split) and the choice:", "",
           "| layer | weights | weight SQNR dB | act bits | fixed SQNR dB | log SQNR dB | choice |",
           "|---|---|---|---|---|---|---|"]
  for row in r["report"].get("layers", []):
    lines.append(
        f"| {row['layer']} | fixed{row['weight_bits']} F={row['weight_F']} | "
        f"{row['weight_sqnr_db']:.1f} | {row['act_bits'] or 'float'} | "
        f"{_fmt(row.get('act_sqnr_fixed_db'))} | {_fmt(row.get('act_sqnr_log_db'))} | "
        f"{row['act_scheme']} |")
  return lines + [""]


def plot_bits(results: list[dict], path: str) -> None:
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fxp = [r for r in results if r["name"].startswith("fixedpoint")]
  fig, axes = plt.subplots(len(fxp), 1, figsize=(10, 3.2 * len(fxp)), squeeze=False)
  for ax, r in zip(axes[:, 0], fxp, strict=True):
    names = [rule["pattern"].replace("\\", "") for rule in r["rules"]]
    x = np.arange(len(names))
    for k, (c, label) in enumerate((("weight", "weights"), ("bias", "biases"),
                                    ("output", "activations"))):
      bits = [rule[c]["bits"] if rule.get(c) else 0 for rule in r["rules"]]
      ax.bar(x + (k - 1) * 0.27, bits, width=0.27, label=label)
    ax.axhline(8, color="gray", lw=0.8, ls="--")
    ax.set_xticks(x, names, rotation=45, ha="right", fontsize=8)
    ax.set_ylabel("bits")
    ax.set_title(f"Goyal et al. fixed-point search ({r['name']}) on {r['model']} "
                 f"({_DATASET.value}): "
                 "bits per layer (dashed: 8)", fontsize=9)
    ax.legend(fontsize=8, ncol=3)
  fig.tight_layout()
  fig.savefig(path, dpi=120)


def main(argv):
  del argv
  prof = profile()
  os.makedirs(workdir_root(), exist_ok=True)
  results = []
  plan = [(model, *run) for model in models() for run in runs(model)]
  with progress.bar(total=len(plan), desc="ptq sweep", unit="run") as runs_bar:
    for model, name, config, overrides in plan:
      runs_bar.set_postfix_str(f"{name} {model}")
      results.append(run_one(model, name, config, overrides))
      runs_bar.update(1)
  floats = {r["model"]: r for r in results if r["name"] == "float"}
  rows = [_row(r, floats[r["model"]]) for r in results]
  today, where = datetime.date.today().isoformat(), machine()
  command = "python bench/ptq_table.py " + " ".join(
      f"--{k}={v}" for k, v in (("dataset", _DATASET.value), ("models", ",".join(models())),
                                ("sequential_epochs", _SEQ_EPOCHS.value),
                                ("act_sqnr_db", _ACT_SQNR.value)))
  lines = [
      "# Post-training quantization: fixed-point search (Goyal et al.) and MXQN", "",
      f"Generated by `{command}` on {today}, {where}. Runs in `{workdir_root()}` (reused when "
      f"present; each run's own date and command are in ptq{prof.suffix}.json).",
      f"{prof.data} Reductions are against the same network with every weight, bias and "
      "activation at 8 bits (quantjax.cost); float tensors count 32 bits. Relative loss = "
      "(float - quantized) / float test accuracy.", "",
      "| model | run | test acc | float | rel. loss | memory red. | mult. red. | BOPs red. "
      "| param KiB | search s | run wall s | run CPU s |",
      "|---|---|---|---|---|---|---|---|---|---|---|---|",
  ]
  for row in rows:
    if row["run"] == "float":
      continue
    lines.append(
        f"| {row['model']} | {row['run']} | {100 * row['test_accuracy']:.1f} % | "
        f"{100 * row['float_test_accuracy']:.1f} % | {100 * row['relative_loss']:+.2f} % | "
        f"{100 * row['memory_reduction']:.1f} % | {100 * row['mult_cost_reduction']:.1f} % | "
        f"{100 * row['bops_reduction']:.1f} % | {row['param_bytes'] / 1024:.1f} | "
        f"{_fmt(row['search_seconds'], '.0f')} | {_fmt(row['wall_seconds'], '.0f')} | "
        f"{_fmt(row['cpu_seconds'], '.0f')} |")
  lines += ["", f"Targets ({prof.targets}):", ""]
  for row in rows:
    if row["run"].startswith("fixedpoint"):
      ok = (row["relative_loss"] <= prof.loss_target
            and row["memory_reduction"] >= prof.memory_target
            and row["mult_cost_reduction"] >= prof.mult_target)
      lines.append(
          f"- {row['run']}, {row['model']}: relative loss {100 * row['relative_loss']:.2f} % "
          f"(target <= {100 * prof.loss_target:g} %), memory "
          f"-{100 * row['memory_reduction']:.1f} % (>= {100 * prof.memory_target:g} %), "
          f"multiplication cost -{100 * row['mult_cost_reduction']:.1f} % "
          f"(>= {100 * prof.mult_target:g} %): "
          f"{'met' if ok else 'NOT met'}; search {row['search_seconds']:.0f} s wall "
          f"({row['evaluations']} evaluations, {row['compilations']} compilation).")
    if row["run"].startswith("mxqn"):
      target = ""
      if row["run"].startswith("mxqn_w8"):
        met = row["points_below_float"] <= 0.5 + 1e-9
        target = f" (target: within 0.5 points: {'met' if met else 'NOT met'})"
      lines.append(f"- {row['run']}, {row['model']}: test - float = "
                   f"{-row['points_below_float']:+.2f} points{target}.")
  lines.append("")
  for r in results:
    if r["name"].startswith("fixedpoint"):
      lines += _bits_table(r)
  lines += [f"![bits per layer](fxp_bits{prof.suffix}.png)", ""]
  for r in results:
    if r["name"].startswith("mxqn"):
      lines += _mxqn_table(r)
  os.makedirs(_OUT_DIR.value, exist_ok=True)
  write_text_atomic(os.path.join(_OUT_DIR.value, f"ptq{prof.suffix}.md"), "\n".join(lines))
  write_text_atomic(os.path.join(_OUT_DIR.value, f"ptq{prof.suffix}.json"), json.dumps(
      {"date": today, "machine": where, "command": command, "rows": rows,
       "fixedpoint_rules": {f"{r['name']}_{r['model']}": r["rules"] for r in results
                            if r["name"].startswith("fixedpoint")},
       "mxqn_layers": {f"{r['name']}_{r['model']}": r["report"].get("layers")
                       for r in results if r["name"].startswith("mxqn")}}, indent=2))
  plot_bits(results, os.path.join(_OUT_DIR.value, f"fxp_bits{prof.suffix}.png"))
  print("\n".join(lines[:20]))


if __name__ == "__main__":
  app.run(main)
