"""The results table: float and every method on LeNet-5 / mnist5k, fine-tuned from float, 3 seeds.

  python bench/accuracy_table.py                          # the full sweep: hours on 2 CPU cores
  python bench/accuracy_table.py --quick                  # 1 seed, short schedule, 6 rows: minutes
  python bench/accuracy_table.py --only='esb|pot' --workdir=runs/table

Per seed, one float run (configs/float.py), then every row fine-tuned from that seed's float
checkpoint (`init_from`) with its method's config (configs/<method>.py, whose schedule is the one
of configs/uniform_w4a4.py) and the row's weight and input quantizers for conv2, fc1, fc2 (and
fc3's input); conv1 and fc3 keep 8-bit uniform weights in every row. Runs are kept under
--workdir; a run whose summary.json exists is read back, not rerun, so an interrupted sweep resumes.

Writes <out_dir>/accuracy.md (test accuracy mean ± sd over seeds, the difference to float on the
same seed, equivalent weight bits, memory, and the issue's checks as PASS/FAIL computed from these
numbers), <out_dir>/accuracy.json (every per-seed number), <out_dir>/pareto.png and
<out_dir>/levels_<method>.png (a trained layer's weight histogram with its levels); --quick
writes to <out_dir>/quick/ unless --out_dir is given, so it never replaces the full table.
"""

from __future__ import annotations

import dataclasses
import datetime
import importlib
import json
import os
import re
import shlex
import statistics
import sys
import tempfile
import time
from typing import Any

# Run as a script from the repository root: make `configs` importable.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import ml_collections  # noqa: E402
from absl import app, flags, logging  # noqa: E402

from quantjax import quantizers, train  # noqa: E402
from quantjax.reports.machine import machine  # noqa: E402
from quantjax.train import checkpoint  # noqa: E402

_QUICK = flags.DEFINE_bool("quick", False, "1 seed, a short schedule and a few rows (minutes).")
_SEEDS = flags.DEFINE_list("seeds", ["0", "1", "2"], "Seeds (--quick keeps the first one).")
_OUT_DIR = flags.DEFINE_string(
    "out_dir", "results",
    "Where accuracy.md/.json and pareto.png go (--quick: <out_dir>/quick unless given).")
_WORKDIR = flags.DEFINE_string(
    "workdir", os.path.join(tempfile.gettempdir(), "quantjax_accuracy_table"),
    "Runs are kept here (one folder per schedule, seed and row) so the sweep can resume.")
_ONLY = flags.DEFINE_string("only", "", "Regex (re.search) over row names, e.g. 'esb|nuuq/N3'.")
_LEVELS_LAYER = flags.DEFINE_string(
    "levels_layer", "fc1", "Layer whose weights and levels <out_dir>/levels_<method>.png show "
    "(first seed, each method's LEVEL_ROWS run); '' writes none.")

# The config each method's rows start from.
METHOD_CONFIGS = {"uniform": "uniform_w4a4", "pact": "pact", "pot": "pot", "log": "log",
                  "esb": "esb", "nuuq": "nuuq", "liss": "liss"}
QUICK_ROWS = ("uniform/W4A4", "pot/W4A4", "esb/W4A4-k2", "nuuq/N4", "nuuq/N3", "liss/W4A4")
# The run of each method whose trained levels results/levels_<method>.png shows.
LEVEL_ROWS = ("uniform/W4A4", "pact/W4A4", "pot/W4A4", "log/W4A4", "esb/W4A4-k2", "nuuq/N4",
              "liss/W4A4")
QUICK_EPOCHS = {"float": 8.0, "fine_tune": 2.0}  # instead of the configs' 80 and 20
TOLERANCE = 1e-9  # accuracies are multiples of 0.1 points on 1,000 digits: compare exactly


@dataclasses.dataclass(frozen=True)
class Row:
  """One setting of one method: the quantizers of the middle layers (conv2, fc1, fc2)."""

  method: str  # a key of METHOD_CONFIGS
  label: str  # the setting, e.g. 'W4A4', 'W3A3-k1', 'N3'
  weight: dict[str, Any]  # weight quantizer spec (replaces the config's quant.weight)
  act: dict[str, Any]  # input quantizer spec (replaces the config's quant.act)
  overrides: tuple[tuple[str, Any], ...] = ()  # further (dotted config field, value) pairs
  bits: int = 0  # nominal bits of the setting (W = A); groups ESB's k for the checks

  @property
  def name(self) -> str:
    return f"{self.method}/{self.label}"


def _same_bits(method: str, b: int, weight: dict, act: dict, label: str = "") -> Row:
  return Row(method, label or f"W{b}A{b}", {**weight, "bits": b}, {**act, "bits": b}, bits=b)


def sweep() -> list[Row]:
  """Every row of the full table, in table order."""
  uniform_w = dict(name="uniform", granularity="channel", scale_method="lsq")
  uniform_a = dict(name="uniform", signed=False, scale_method="max")
  rows = [_same_bits("uniform", b, uniform_w, uniform_a) for b in (2, 3, 4, 8)]
  rows += [_same_bits("pact", b, uniform_w, dict(name="pact")) for b in (3, 4)]
  for method, extra in (("pot", {}), ("log", {"base_root": 2})):
    rows += [_same_bits(method, b, dict(name=method, granularity="channel", full_scale="sqnr",
                                        **extra),
                        dict(name=method, signed=False, full_scale="sqnr", **extra))
             for b in (3, 4)]
  for b in (3, 4, 5):
    for k in range(1, b):
      rows.append(_same_bits(
          "esb", b, dict(name="esb", significant_bits=k, granularity="channel", alpha="learned",
                         dda_loss="mse"),
          dict(name="esb", significant_bits=k, signed=False, alpha="lambda_std"),
          label=f"W{b}A{b}-k{k}"))
  nuuq_a = dict(name="uniform", bits=8, signed=False, scale_method="max")
  rows += [Row("nuuq", f"N{n}", dict(name="nuuq", num_levels=n, container_bits=8, grid="pow2",
                                     recluster_every=50, freeze_at=400), nuuq_a)
           for n in (3, 4, 5, 8)]
  liss = dict(name="liss", int_bits=8, fit="gaussian")
  rows += [_same_bits("liss", b, liss, liss) for b in (3, 4)]
  return rows


def select_rows(rows: list[Row], quick: bool, only: str) -> list[Row]:
  if quick:
    rows = [r for r in rows if r.name in QUICK_ROWS]
  if only:
    rows = [r for r in rows if re.search(only, r.name)]
  return rows


# -- configs and runs ------------------------------------------------------------------------------


def make_config(row: Row | None, seed: int, init_from: str,
                quick: bool) -> ml_collections.ConfigDict:
  """The float run's config (row None) or a row's: its method's config with the row's specs."""
  if row is None:
    config = importlib.import_module("configs.float").get_config()
  else:
    config = importlib.import_module(f"configs.{METHOD_CONFIGS[row.method]}").get_config()
    config.quant.weight = ml_collections.ConfigDict(row.weight)
    config.quant.act = ml_collections.ConfigDict(row.act)
    config.init_from = init_from
    for key, value in row.overrides:
      *parents, field = key.split(".")
      node = config
      for parent in parents:
        node = node[parent]
      node[field] = value
  config.seed = seed
  config.tensorboard = False
  if quick:
    config.num_epochs = QUICK_EPOCHS["float" if row is None else "fine_tune"]
    config.eval_every_epochs = 0.0
  return config


def registered(row: Row) -> bool:
  return {row.weight["name"], row.act["name"]} <= set(quantizers.names())


def run(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """The run's summary: read back if `workdir` has one made with this config, else trained."""
  path = os.path.join(workdir, "summary.json")
  if os.path.exists(path):
    recorded = checkpoint.load_config(workdir).to_dict()
    if recorded != json.loads(json.dumps(config.to_dict())):
      raise ValueError(f"{workdir} was run with a different config; use a new --workdir")
    with open(path) as f:
      return json.load(f)
  return train.train_and_evaluate(config, workdir)


def row_cost(config: ml_collections.ConfigDict) -> dict[str, float]:
  """The cost model's reductions against all-8-bit for a row's plan (the same for every seed)."""
  from quantjax.cost.model import cost_report
  from quantjax.train import experiment

  exp = experiment.build(config, training=False)
  reduction = cost_report(exp.layers, exp.plan)["reduction_vs_8bit"]
  return {k: reduction[k] for k in ("memory_bits", "mult_cost", "bops")}


def record(summary: dict[str, Any]) -> dict[str, float]:
  """The per-seed numbers of one run, from its summary.json."""
  rows = summary["layers"]
  weights = sum(r["num_weights"] for r in rows)
  return {
      "test": summary["accuracy"]["test"],
      "validation": summary["accuracy"]["validation"],
      # Bits per Conv/Dense weight, averaged over all of them (NUUQ's rows count log2 N).
      "weight_bits": sum(r["weight_bits"] * r["num_weights"] for r in rows) / weights,
      "memory_kib": summary["model_size_kib"],
      "train_seconds": summary.get("train_seconds", float("nan")),
  }


# -- the table (pure: tested on synthetic numbers) ------------------------------------------------


def row_stats(per_seed: dict[str, dict[str, float]],
              float_per_seed: dict[str, dict[str, float]]) -> dict[str, Any]:
  """Mean ± sd over seeds, and the mean difference to float on the same seeds (points)."""
  seeds = sorted(per_seed)
  test = [100 * per_seed[s]["test"] for s in seeds]
  deltas = [100 * (per_seed[s]["test"] - float_per_seed[s]["test"])
            for s in seeds if s in float_per_seed]
  return {
      "n": len(seeds),
      "test_mean": statistics.fmean(test),
      "test_sd": statistics.stdev(test) if len(test) > 1 else None,
      "validation_mean": statistics.fmean(100 * per_seed[s]["validation"] for s in seeds),
      "delta_mean": statistics.fmean(deltas) if deltas else None,
      "weight_bits": per_seed[seeds[0]]["weight_bits"],
      "memory_kib": per_seed[seeds[0]]["memory_kib"],
      "train_seconds": statistics.fmean(per_seed[s]["train_seconds"] for s in seeds),
      "cost": per_seed[seeds[0]].get("cost"),
  }


def _delta_check(name: str, limit: float):
  def check(stats):
    s = stats.get(name)
    if s is None:
      return "SKIP", f"{name} was not run"
    ok = s["delta_mean"] >= -limit - TOLERANCE
    return ("PASS" if ok else "FAIL"), f"{name} - float = {s['delta_mean']:+.2f} points"
  return check


def best_esb(stats: dict[str, dict[str, Any]], bits: int) -> str | None:
  """The ESB row at `bits` with the best mean validation accuracy (k is chosen on validation)."""
  names = [n for n, s in stats.items() if n.startswith("esb/") and s.get("bits") == bits]
  return max(names, key=lambda n: stats[n]["validation_mean"], default=None)


def _esb_check(baseline: str, bits: int):
  def check(stats):
    esb = best_esb(stats, bits)
    if esb is None or baseline not in stats:
      missing = f"esb/W{bits}A{bits}-k*" if esb is None else baseline
      return "SKIP", f"{missing} was not run"
    e, b = stats[esb]["test_mean"], stats[baseline]["test_mean"]
    ok = e >= b - TOLERANCE
    return ("PASS" if ok else "FAIL"), (f"{esb} (k picked on validation) {e:.2f} % vs {baseline} "
                                        f"{b:.2f} % ({e - b:+.2f} points)")
  return check


CHECKS = (
    ("NUUQ 4 levels loses at most 0.1 points", _delta_check("nuuq/N4", 0.1)),
    ("NUUQ 3 levels loses at most 0.6 points", _delta_check("nuuq/N3", 0.6)),
    ("ESB >= uniform at W3A3", _esb_check("uniform/W3A3", 3)),
    ("ESB >= uniform at W4A4", _esb_check("uniform/W4A4", 4)),
    ("ESB >= PoT at W3A3", _esb_check("pot/W3A3", 3)),
    ("ESB >= PoT at W4A4", _esb_check("pot/W4A4", 4)),
    ("Liss W4A4 within 1 point of float", _delta_check("liss/W4A4", 1.0)),
    ("uniform W4A4 within 0.5 points of float", _delta_check("uniform/W4A4", 0.5)),
)


def run_checks(stats: dict[str, dict[str, Any]]) -> list[dict[str, str]]:
  """The issue's claims, each PASS / FAIL / SKIP (row not run) with the numbers it used."""
  out = []
  for claim, check in CHECKS:
    status, detail = check(stats)
    out.append({"claim": claim, "status": status, "detail": detail})
  return out


def _pm(mean: float, sd: float | None) -> str:
  return f"{mean:.2f} ± {sd:.2f} %" if sd is not None else f"{mean:.2f} %"


def markdown(report: dict[str, Any]) -> str:
  """accuracy.md from the report (see `build_report`)."""
  quick = " (QUICK: 1 seed, short schedule; not the results table)" if report["quick"] else ""
  lines = [
      f"# Accuracy of every method on LeNet-5 / mnist5k{quick}", "",
      f"Generated by `{report['command']}` on {report['date']}, {report['machine']}.", "",
      f"Seeds {', '.join(report['seeds'])}; float for {report['epochs']['float']:g} epochs, each "
      f"row fine-tuned from that seed's float checkpoint for {report['epochs']['fine_tune']:g}. "
      "Test accuracy on the 1,000 test digits, mean ± sd over seeds; Δ = row - float on the same "
      "seed, mean over seeds, in points. W bits: stored bits per Conv/Dense weight averaged over "
      "all of them (conv1 and fc3 are 8-bit in every row; NUUQ counts log2 N). Memory: weights "
      "at those bits plus 32-bit biases. Train s: the training loop's seconds per run (mean over "
      "seeds), from each run's summary.json. Cost (quantjax.cost, the same for every seed): "
      "reduction against the same network at all-8-bit of Goyal et al.'s memory (weights, biases, "
      "activations per image), multiplication cost and bit-operations; float tensors (the "
      "image into conv1, the logits) count 32 bits, so rows can cost more BOPs than all-8-bit.",
      "",
      "| method | setting | middle layers (weight / input) | W bits | memory KiB | test acc | Δ "
      "vs float | reduction vs all-8-bit: memory / mult. / BOPs | seeds | train s |",
      "|---|---|---|---|---|---|---|---|---|---|",
  ]
  for entry in report["rows"]:
    s = entry.get("stats")
    if s is None:
      lines.append(f"| {entry['method']} | {entry['label']} | {entry['describe']} | | | "
                   f"{entry['status']} | | | 0 | |")
      continue
    delta = "" if s["delta_mean"] is None else f"{s['delta_mean']:+.2f}"
    seeds = str(s["n"]) if entry["status"] == "ok" else f"{s['n']} ({entry['status']})"
    cost = s.get("cost")
    cost = (" / ".join(f"{100 * cost[k]:+.0f} %" for k in ("memory_bits", "mult_cost", "bops"))
            if cost else "")
    lines.append(f"| {entry['method']} | {entry['label']} | {entry['describe']} | "
                 f"{s['weight_bits']:.2f} | {s['memory_kib']:.1f} | "
                 f"{_pm(s['test_mean'], s['test_sd'])} | {delta} | {cost} | {seeds} | "
                 f"{s['train_seconds']:.0f} |")
  lines += ["", "## Checks (computed from the table)", ""]
  lines += [f"- {c['status']}: {c['claim']}: {c['detail']}" for c in report["checks"]]
  return "\n".join(lines) + "\n"


def describe(spec: dict[str, Any]) -> str:
  """The quantizer's short label (as in summary.json), or its spec if it is not registered."""
  try:
    return quantizers.from_dict(spec).describe()
  except ValueError:
    return ", ".join(f"{k}={v}" for k, v in spec.items())


def build_report(rows: list[Row], results: dict[str, dict[str, dict]], status: dict[str, str],
                 **header) -> dict[str, Any]:
  """Everything accuracy.md/.json hold: header, per-seed numbers, stats per row, checks."""
  float_runs = results.get("float", {})
  entries = [{"name": "float", "method": "float", "label": "", "describe": "float / float",
              "bits": 32, "status": status.get("float", "ok"), "per_seed": float_runs,
              "stats": row_stats(float_runs, float_runs) if float_runs else None}]
  for row in rows:
    per_seed = results.get(row.name, {})
    entries.append({
        "name": row.name, "method": row.method, "label": row.label, "bits": row.bits,
        "describe": f"{describe(row.weight)} / {describe(row.act)}",
        "weight": row.weight, "act": row.act,
        "overrides": [list(o) for o in row.overrides], "status": status.get(row.name, "ok"),
        "per_seed": per_seed,
        "stats": row_stats(per_seed, float_runs) if per_seed else None})
  stats = {e["name"]: {**e["stats"], "bits": e["bits"]} for e in entries if e["stats"]}
  return {**header, "rows": entries, "checks": run_checks(stats)}


def plot_pareto(report: dict[str, Any], path: str) -> None:
  """Test accuracy against equivalent weight bits, one series per method, float as a line."""
  import matplotlib  # the optional 'plots' extra: only plotting needs it

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, ax = plt.subplots(figsize=(7, 4.5))
  methods: dict[str, list[dict]] = {}
  for entry in report["rows"]:
    if entry["stats"] is not None and entry["method"] != "float":
      methods.setdefault(entry["method"], []).append(entry["stats"])
  for i, (method, points) in enumerate(methods.items()):
    color = f"C{i}"
    ax.errorbar([p["weight_bits"] for p in points], [p["test_mean"] for p in points],
                yerr=[p["test_sd"] or 0.0 for p in points], marker="o", linestyle="none",
                capsize=3, color=color, label=method)
    # A line through the best setting (on validation) at each bit width, e.g. ESB's best k.
    best: dict[float, dict] = {}
    for p in points:
      x = round(p["weight_bits"], 3)
      if x not in best or p["validation_mean"] > best[x]["validation_mean"]:
        best[x] = p
    xs = sorted(best)
    ax.plot(xs, [best[x]["test_mean"] for x in xs], color=color, alpha=0.6)
  float_entry = report["rows"][0]
  if float_entry["stats"] is not None:
    ax.axhline(float_entry["stats"]["test_mean"], color="k", linestyle="--", label="float")
  ax.set_xlabel("equivalent weight bits (mean over Conv/Dense weights)")
  ax.set_ylabel("test accuracy (%)")
  ax.set_title("LeNet-5 on mnist5k" + (" (quick)" if report["quick"] else ""))
  ax.grid(alpha=0.3)
  ax.legend(fontsize="small")
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def write_outputs(report: dict[str, Any], out_dir: str) -> None:
  os.makedirs(out_dir, exist_ok=True)
  with open(os.path.join(out_dir, "accuracy.md"), "w") as f:
    f.write(markdown(report))
  with open(os.path.join(out_dir, "accuracy.json"), "w") as f:
    json.dump(report, f, indent=1, sort_keys=True)
    f.write("\n")
  plot_pareto(report, os.path.join(out_dir, "pareto.png"))


def write_level_figures(workdirs: dict[str, str], layer: str, out_dir: str) -> list[str]:
  """levels_<method>.png: `layer`'s trained weights and levels, for each run in `workdirs`."""
  from quantjax.reports import levels  # matplotlib only when figures are written

  written = []
  for name, workdir in workdirs.items():
    result = levels.layer_levels(workdir, layer)
    path = os.path.join(out_dir, f"levels_{name.split('/')[0]}.png")
    levels.plot_levels(result, path, title=(
        f"{name}: {result.layer}" + ("" if result.channel is None else
                                      f" channel {result.channel}") +
        f", {result.quantizer}, {len(result.levels)} levels"))
    written.append(path)
  return written


# -- the program -----------------------------------------------------------------------------------


def _timed(name: str, seed: str, config, workdir: str) -> dict[str, float]:
  start = time.perf_counter()
  result = record(run(config, workdir))
  print(f"{name:<14} seed {seed}: test {100 * result['test']:.1f} %  "
        f"({time.perf_counter() - start:.0f} s)", flush=True)
  return result


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  quick = _QUICK.value
  seeds = _SEEDS.value[:1] if quick and not flags.FLAGS["seeds"].present else _SEEDS.value
  rows = select_rows(sweep(), quick, _ONLY.value)
  root = os.path.join(_WORKDIR.value, "quick" if quick else "full")
  start = time.perf_counter()
  results: dict[str, dict[str, dict]] = {}
  status: dict[str, str] = {}
  for seed in seeds:
    float_dir = os.path.abspath(os.path.join(root, f"seed{seed}", "float"))
    float_config = make_config(None, int(seed), "", quick)
    results.setdefault("float", {})[seed] = _timed("float", seed, float_config, float_dir)
    results["float"][seed]["cost"] = row_cost(float_config)
    for row in rows:
      if not registered(row):
        status[row.name] = "quantizer not registered yet"
        continue
      workdir = os.path.join(root, f"seed{seed}", row.name.replace("/", "_"))
      try:
        config = make_config(row, int(seed), float_dir, quick)
        results.setdefault(row.name, {})[seed] = _timed(row.name, seed, config, workdir)
        results[row.name][seed]["cost"] = row_cost(config)
      except Exception as e:  # noqa: BLE001  one failed row (e.g. a NaN loss) must not end the sweep
        first_line = (str(e).splitlines() or [type(e).__name__])[0]
        status[row.name] = f"failed: {first_line[:120]}"
        print(f"{row.name:<14} seed {seed}: {status[row.name]}", flush=True)
  epochs = {"float": make_config(None, 0, "", quick).num_epochs,
            "fine_tune": make_config(sweep()[0], 0, "", quick).num_epochs}
  report = build_report(
      rows, results, status,
      command=shlex.join(["python", "bench/accuracy_table.py", *sys.argv[1:]]),
      date=datetime.date.today().isoformat(), machine=machine(), quick=quick, seeds=seeds,
      epochs=epochs)
  # A quick run never overwrites the full table.
  out_dir = _OUT_DIR.value
  if quick and not flags.FLAGS["out_dir"].present:
    out_dir = os.path.join(out_dir, "quick")
  write_outputs(report, out_dir)
  if _LEVELS_LAYER.value:
    first = os.path.join(root, f"seed{seeds[0]}")
    runs = {name: os.path.join(first, name.replace("/", "_")) for name in LEVEL_ROWS
            if any(r.name == name for r in rows) and seeds[0] in results.get(name, {})}
    for path in write_level_figures(runs, _LEVELS_LAYER.value, out_dir):
      print(f"wrote {path}")
  print(markdown(report))
  # Not in the report: runs read back from --workdir take no time here.
  print(f"wrote {out_dir}/accuracy.md, accuracy.json, pareto.png; this invocation took "
        f"{time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
  logging.set_verbosity(logging.WARNING)
  app.run(main)
