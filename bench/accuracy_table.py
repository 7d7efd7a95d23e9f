"""The results table: float and every method on LeNet-5, fine-tuned from float, paired over seeds.

  python bench/accuracy_table.py --dataset=fashion_mnist   # the headline table: hours on 2 cores
  python bench/accuracy_table.py                           # mnist5k, the quick table
  python bench/accuracy_table.py --quick                   # 1 seed, short schedule: minutes
  python bench/accuracy_table.py --only='esb|pot' --workdir=runs/table

Per seed, one float run from scratch; then every row starts from that seed's float checkpoint
(`init_from`): the quantization-aware rows fine-tune with their method's config
(configs/<method>.py; on Fashion-MNIST through configs/fashion/lenet5.py), the `float/FT` row
continues the float run in float for the same epochs (the fair baseline: every fine-tuned row is
compared with it, so extra training does not flatter quantization), and the post-training rows
(`ptq/...`) quantize the float checkpoint without training (compared with `float`). conv1 and fc3
keep 8-bit uniform weights in every fine-tuned row. Ablation rows isolate each paper's own
ingredient: ESB without its distribution-difference loss (`dda.weight=0`), NUUQ without re-
clustering (`recluster_every=0`), MXQN's per-layer choice against all-fixed-point activations at the
same bits.

Statistics: per row the mean ± sd over seeds; per claim the paired difference against its baseline
on the same seeds, with a two-sided 95 % Student-t interval. A claim is PASS when the whole interval
satisfies it, FAIL when none of it does, INCONCLUSIVE otherwise; never by a point estimate. A
claim still INCONCLUSIVE after 3 seeds with its mean within two standard errors of its limit gets
seeds 3 and 4 for its rows (`--extra_seeds`).

Runs live under --workdir (one folder per dataset, schedule, seed and row); a run whose
summary.json exists is read back, not rerun, and an interrupted run resumes from its checkpoint, so
the command resumes. Rows run in order of the claims that need them (`Row.tier`), and the tables are
rewritten after every run: until every planned run has finished they say PARTIAL and how many runs
are missing. Writes <out_dir>/<stem>.md and .json (stem `fashion` for Fashion-MNIST, `accuracy`
for mnist5k), <stem>_pareto.png and levels figures; --quick writes under <out_dir>/quick/.
"""

from __future__ import annotations

import dataclasses
import datetime
import importlib
import json
import math
import os
import re
import shlex
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

# Run as a script from the repository root: make `configs` importable.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import ml_collections  # noqa: E402
from absl import app, flags, logging  # noqa: E402

from quantjax import quantizers, train  # noqa: E402
from quantjax.reports import progress  # noqa: E402
from quantjax.reports.machine import machine  # noqa: E402
from quantjax.train import checkpoint, experiment, preemption  # noqa: E402
from quantjax.workdir import write_text_atomic  # noqa: E402

_DATASET = flags.DEFINE_enum(
    "dataset", "mnist5k",
    ["mnist5k", "fashion_mnist", "fashion_mnist_resnet20", "fashion_mnist_resnet20_short"],
    "mnist5k (LeNet-5, quick, 1,000 test digits), fashion_mnist (LeNet-5, the headline), "
    "fashion_mnist_resnet20 (the BatchNorm network, a few rows) or fashion_mnist_resnet20_short "
    "(the same rows on the schedule a 2-core CPU can run: float 12 epochs, rows 3).")
_QUICK = flags.DEFINE_bool("quick", False, "1 seed, a short schedule and a few rows (minutes).")
_SEEDS = flags.DEFINE_list("seeds", ["0", "1", "2"], "Seeds (--quick keeps the first one).")
_EXTRA_SEEDS = flags.DEFINE_list(
    "extra_seeds", ["3", "4"], "Seeds added to the rows of a claim that is INCONCLUSIVE and "
    "within two standard errors of its limit after --seeds; empty: none.")
_OUT_DIR = flags.DEFINE_string(
    "out_dir", "results",
    "Where the tables and figures go (--quick: <out_dir>/quick unless given).")
_WORKDIR = flags.DEFINE_string(
    "workdir", os.path.join(tempfile.gettempdir(), "quantjax_accuracy_table"),
    "Runs are kept here (one folder per dataset, schedule, seed and row) so the sweep resumes.")
_ONLY = flags.DEFINE_string("only", "", "Regex (re.search) over row names, e.g. 'esb|nuuq/N3'.")
_MAX_TIER = flags.DEFINE_integer("max_tier", 9, "Run only rows of this tier or lower (1: the "
                                 "rows the claims need first).")
_REPORT_ONLY = flags.DEFINE_bool(
    "report_only", False, "Train nothing: rewrite the tables from the runs already finished under "
    "--workdir (the others count as missing).")
_SHARD = flags.DEFINE_string(
    "shard", "", "'i/n': run only every n-th planned (row, seed) starting at the i-th (0-based), "
    "so n processes or machines sharing --workdir split one sweep (pass each its own --out_dir, "
    "then --report_only writes the table from all of them). The float runs of --seeds must exist "
    "or be in shard 0, which trains them first; the others wait for them.")
_RUNS_NOTE = flags.DEFINE_string(
    "runs_note", "", "Where the runs were made, when not all by this invocation on this machine "
    "(e.g. some on a GPU with bench/gpu.sh); printed under the header.")
_LEVELS_LAYER = flags.DEFINE_string(
    "levels_layer", "fc1", "Layer whose weights and levels <out_dir>/levels_<method>.png show "
    "(first seed, each method's LEVEL_ROWS run); '' writes none.")

# The config each method's rows start from (configs/<name>.py).
METHOD_CONFIGS = {"uniform": "uniform_w4a4", "pact": "pact", "pot": "pot", "log": "log",
                  "esb": "esb", "nuuq": "nuuq", "liss": "liss"}
QUICK_ROWS = ("float/FT", "uniform/W4A4", "pot/W4A4", "esb/W4A4-k2", "nuuq/N4", "nuuq/N3",
              "liss/W4A4")
# The run of each method whose trained levels results/levels_<method>.png shows.
LEVEL_ROWS = ("uniform/W4A4", "pact/W4A4", "pot/W4A4", "log/W4A4", "esb/W4A4-k2", "nuuq/N4",
              "liss/W4A4")
QUICK_EPOCHS = {"float": 8.0, "fine_tune": 2.0}  # instead of the configs' schedules
T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262}


@dataclasses.dataclass(frozen=True)
class Profile:
  """What differs between the two tables: data, schedule, file names and the claims' limits."""

  dataset: str
  title: str
  stem: str  # <stem>.md, <stem>.json, <stem>_pareto.png
  test_images: int
  config: Callable[[str], ml_collections.ConfigDict]  # 'float', 'float_ft' or a configs/ name
  nuuq_schedule: dict[str, int]  # NUUQ's re-clustering steps for this fine-tuning length
  limits: dict[str, float]  # allowed loss in points for the 'within' claims
  rows: tuple[str, ...] = ()  # the rows of `sweep` this table runs (empty: all of them)
  float_target: float = 0.0  # the float network's target test accuracy in %, 0: none
  runs_dir: str = ""  # folder under --workdir (default: `dataset`)


def _mnist5k_config(name: str) -> ml_collections.ConfigDict:
  if name == "float_ft":
    from configs import uniform_w4a4

    config = uniform_w4a4.fine_tuning(importlib.import_module("configs.float").get_config())
    config.quant.enabled = False
    return config
  return importlib.import_module(f"configs.{name}").get_config()


def _fashion_config(name: str) -> ml_collections.ConfigDict:
  from configs.fashion import lenet5

  return lenet5.get_config(name)


def _fashion_resnet20_config(name: str, schedule: str = "full") -> ml_collections.ConfigDict:
  from configs.fashion import resnet20

  return resnet20.get_config(f"{name},{schedule}")


PROFILES = {
    "mnist5k": Profile(
        "mnist5k", "LeNet-5 on mnist5k", "accuracy", 1000, _mnist5k_config,
        nuuq_schedule=dict(recluster_every=50, freeze_at=400),  # 540 fine-tuning steps
        limits={"uniform/W4A4": 0.5, "uniform/W2A2": 3.0, "nuuq/N4": 0.1, "nuuq/N3": 0.6,
                "liss/W4A4": 1.0}),
    "fashion_mnist": Profile(
        "fashion_mnist", "LeNet-5 on Fashion-MNIST", "fashion", 10000, _fashion_config,
        nuuq_schedule=dict(recluster_every=100, freeze_at=1600),  # 2,105 fine-tuning steps
        limits={"uniform/W4A4": 0.5, "uniform/W2A2": 3.0, "nuuq/N4": 0.5, "nuuq/N3": 1.0,
                "liss/W4A4": 1.0}, float_target=91.0),
    # The BatchNorm network (configs/fashion/resnet20.py: float 40 epochs, rows fine-tuned 8):
    # its float target and the uniform and NUUQ claims, not every row (hours per row on 2 cores).
    "fashion_mnist_resnet20": Profile(
        "fashion_mnist", "ResNet-20 on Fashion-MNIST", "fashion_resnet20", 10000,
        _fashion_resnet20_config,
        nuuq_schedule=dict(recluster_every=100, freeze_at=2600),  # 3,376 fine-tuning steps
        limits={"uniform/W4A4": 0.5, "uniform/W2A2": 3.0, "nuuq/N4": 0.5, "nuuq/N3": 1.0,
                "liss/W4A4": 1.0},
        rows=("float/FT", "uniform/W4A4", "uniform/W2A2", "nuuq/N4"),
        float_target=93.5,
        runs_dir="fashion_mnist_resnet20"),
}
# The same rows and claims on the short schedule (float 12 epochs, rows fine-tuned 3): one seed in
# an estimated 1.2-2.2 hours of a 2-core CPU (configs/fashion/resnet20.py).
PROFILES["fashion_mnist_resnet20_short"] = dataclasses.replace(
    PROFILES["fashion_mnist_resnet20"], title="ResNet-20 on Fashion-MNIST, short schedule",
    stem="fashion_resnet20_short", config=lambda name: _fashion_resnet20_config(name, "short"),
    nuuq_schedule=dict(recluster_every=100, freeze_at=1000),  # 1,266 fine-tuning steps
    runs_dir="fashion_mnist_resnet20_short")


@dataclasses.dataclass(frozen=True)
class Row:
  """One setting of one method: the quantizers of the middle layers (conv2, fc1, fc2)."""

  method: str  # a key of METHOD_CONFIGS, 'float' (the fine-tuned float baseline) or 'ptq'
  label: str  # the setting, e.g. 'W4A4', 'W3A3-k1', 'N3'
  weight: dict[str, Any]  # weight quantizer spec (replaces the config's quant.weight)
  act: dict[str, Any]  # input quantizer spec (replaces the config's quant.act)
  overrides: tuple[tuple[str, Any], ...] = ()  # further (dotted config field, value) pairs
  bits: int = 0  # nominal bits of the setting (W = A); groups ESB's k for the checks
  act_bits: int = 0  # the middle layers' input bits (0 = float)
  tier: int = 3  # 1 first: the rows the claims need; 3 the rest
  config: str = ""  # configs/ name for 'float' and 'ptq' rows

  @property
  def name(self) -> str:
    return f"{self.method}/{self.label}"

  @property
  def baseline(self) -> str:
    """The row every seed of this one is paired with: float/FT for fine-tuned rows, float for
    PTQ rows and for float/FT itself (its Δ is what the extra epochs alone are worth)."""
    return "float" if self.method in ("ptq", "float") else "float/FT"


def _same_bits(method: str, b: int, weight: dict, act: dict, label: str = "",
               tier: int = 3, overrides=()) -> Row:
  return Row(method, label or f"W{b}A{b}", {**weight, "bits": b}, {**act, "bits": b},
             bits=b, act_bits=b, tier=tier, overrides=overrides)


_TIER1 = {"uniform/W4A4", "uniform/W3A3", "uniform/W2A2", "esb/W3A3-k1", "esb/W3A3-k2",
          "nuuq/N4", "nuuq/N3", "float/FT"}
_TIER2 = {"pot/W3A3", "pot/W4A4", "esb/W4A4-k1", "esb/W4A4-k2", "esb/W4A4-k3", "liss/W4A4",
          "esb/W3A3-k2-noDDA", "nuuq/N4-norecluster", "nuuq/N3-norecluster"}


def sweep(profile: Profile | None = None) -> list[Row]:
  """Every row of the full table, in table order."""
  profile = profile or PROFILES["mnist5k"]
  rows = [Row("float", "FT", {}, {}, bits=32, tier=1, config="float_ft")]
  uniform_w = dict(name="uniform", granularity="channel", scale_method="lsq")
  # LSQ on both sides: a learned activation step, as the W2A2 target ("LSQ-style") names; a
  # max-scaled 2-bit activation spends its four levels on the outliers (-10 points on Fashion).
  uniform_a = dict(name="uniform", signed=False, scale_method="lsq")
  rows += [_same_bits("uniform", b, uniform_w, uniform_a) for b in (2, 3, 4, 8)]
  rows += [_same_bits("pact", b, uniform_w, dict(name="pact")) for b in (3, 4)]
  for method, extra in (("pot", {}), ("log", {"base_root": 2})):
    rows += [_same_bits(method, b, dict(name=method, granularity="channel", full_scale="sqnr",
                                        **extra),
                        dict(name=method, signed=False, full_scale="sqnr", **extra))
             for b in (3, 4)]
  esb_w = dict(name="esb", granularity="channel", alpha="learned", dda_loss="mse")
  esb_a = dict(name="esb", signed=False, alpha="lambda_std")
  for b in (3, 4, 5):
    for k in range(1, b):
      rows.append(_same_bits("esb", b, {**esb_w, "significant_bits": k},
                             {**esb_a, "significant_bits": k}, label=f"W{b}A{b}-k{k}"))
  # ESB's own ingredient: the same quantizer without the distribution-difference loss.
  rows.append(_same_bits("esb", 3, {**esb_w, "significant_bits": 2},
                         {**esb_a, "significant_bits": 2}, label="W3A3-k2-noDDA",
                         overrides=(("dda.weight", 0.0),)))
  nuuq_a = dict(name="uniform", bits=8, signed=False, scale_method="max")
  nuuq_w = dict(name="nuuq", container_bits=8, grid="pow2", **profile.nuuq_schedule)
  rows += [Row("nuuq", f"N{n}", {**nuuq_w, "num_levels": n}, nuuq_a, act_bits=8)
           for n in (3, 4, 5, 8)]
  # NUUQ's own ingredient: levels fitted once at the start and never re-clustered.
  rows += [Row("nuuq", f"N{n}-norecluster", {**nuuq_w, "num_levels": n, "recluster_every": 0},
               nuuq_a, act_bits=8) for n in (3, 4)]
  liss = dict(name="liss", int_bits=8, fit="gaussian")
  rows += [_same_bits("liss", b, liss, liss) for b in (3, 4)]
  # Post-training rows (no training; paired with the float checkpoint they quantize).
  rows += [
      Row("ptq", "fixed-point search", {}, {}, tier=2, config="ptq_fixedpoint"),
      Row("ptq", "MXQN W8 mixed A8", {}, {}, bits=8, act_bits=8, config="ptq_mxqn"),
      Row("ptq", "MXQN W8 fixed A8", {}, {}, bits=8, act_bits=8, config="ptq_mxqn",
          overrides=(("ptq.force", ".*=fixed"),)),
      Row("ptq", "MXQN W6 mixed A5-4", {}, {}, bits=6, act_bits=5, tier=2, config="ptq_mxqn",
          overrides=(("ptq.weight_bits", 6), ("ptq.act_bits", 5), ("ptq.min_act_bits", 4),
                     ("ptq.act_sqnr_db", 20.0))),
      Row("ptq", "MXQN W6 fixed A5-4", {}, {}, bits=6, act_bits=5, tier=2, config="ptq_mxqn",
          overrides=(("ptq.weight_bits", 6), ("ptq.act_bits", 5), ("ptq.min_act_bits", 4),
                     ("ptq.act_sqnr_db", 20.0), ("ptq.force", ".*=fixed"))),
  ]
  tiers = {name: 1 for name in _TIER1} | {name: 2 for name in _TIER2}
  rows = [dataclasses.replace(r, tier=tiers.get(r.name, r.tier)) for r in rows]
  return [r for r in rows if r.name in profile.rows] if profile.rows else rows


def select_rows(rows: list[Row], quick: bool, only: str, max_tier: int = 9) -> list[Row]:
  if quick:
    rows = [r for r in rows if r.name in QUICK_ROWS]
  if only:
    rows = [r for r in rows if re.search(only, r.name)]
  return [r for r in rows if r.tier <= max_tier]


# -- configs and runs ------------------------------------------------------------------------------


def _set(config: ml_collections.ConfigDict, key: str, value: Any) -> None:
  *parents, field = key.split(".")
  node = config
  for parent in parents:
    node = node[parent]
  node[field] = value


def make_config(row: Row | None, seed: int, init_from: str, quick: bool,
                profile: Profile | None = None) -> ml_collections.ConfigDict:
  """The float run's config (row None) or a row's, for `seed`."""
  profile = profile or PROFILES["mnist5k"]
  if row is None:
    config = profile.config("float")
  elif row.config:
    config = profile.config(row.config)
    config.init_from = init_from
  else:
    config = profile.config(METHOD_CONFIGS[row.method])
    config.quant.weight = ml_collections.ConfigDict(row.weight)
    config.quant.act = ml_collections.ConfigDict(row.act)
    config.init_from = init_from
  for key, value in (row.overrides if row is not None else ()):
    _set(config, key, value)
  config.seed = seed
  config.tensorboard = False
  if quick:
    config.num_epochs = QUICK_EPOCHS["float" if row is None else "fine_tune"]
    config.eval_every_epochs = 0.0
  return config


def registered(row: Row) -> bool:
  names = {spec["name"] for spec in (row.weight, row.act) if spec}
  return names <= set(quantizers.names())


def run(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """The run's summary: read back if `workdir` has one made with this config, else trained."""
  path = os.path.join(workdir, "summary.json")
  if os.path.exists(path):
    changed = config_diff(checkpoint.load_config(workdir).to_dict(), config.to_dict())
    if config.get("mode") == "ptq":  # a PTQ run records the formats it chose as its quantizers
      changed = [c for c in changed if not c.startswith("quant.")]
    if changed:
      raise ValueError(f"{workdir} was run with a different config ({', '.join(changed)}); use "
                       "a new --workdir")
    with open(path) as f:
      return json.load(f)
  if config.get("mode") == "ptq":
    from quantjax import ptq

    return ptq.run(config, workdir)
  return train.train_and_evaluate(config, workdir)


def config_diff(recorded: dict[str, Any], current: dict[str, Any], prefix: str = "") -> list[str]:
  """Dotted fields whose values differ between two configs.

  A field present in only one of them is not a difference: a run recorded before a field was
  added to the configs (or after one was removed) is still the same run, so a sweep resumes
  across such changes of the code.
  """
  recorded, current = json.loads(json.dumps(recorded)), json.loads(json.dumps(current))
  out = []
  for key in sorted(set(recorded) & set(current)):
    a, b = recorded[key], current[key]
    if isinstance(a, dict) and isinstance(b, dict):
      out += config_diff(a, b, f"{prefix}{key}.")
    elif a != b:
      out.append(f"{prefix}{key}: {a!r} -> {b!r}")
  return out


def row_cost(config: ml_collections.ConfigDict) -> dict[str, float]:
  """The cost model's totals and reductions against all-8-bit for a config's plan."""
  from quantjax.cost.model import cost_report
  from quantjax.train import experiment

  exp = experiment.build(config, training=False)
  return _cost_fields(cost_report(exp.layers, exp.plan))


def _cost_fields(report: dict[str, Any]) -> dict[str, float]:
  reduction, total = report["reduction_vs_8bit"], report["total"]
  return {"memory_bits": reduction["memory_bits"], "mult_cost": reduction["mult_cost"],
          "bops": reduction["bops"], "memory_kib": total["memory_bits"] / 8 / 1024,
          "mult_cost_abs": total["mult_cost"]}


def workdir_cost(workdir: str) -> dict[str, float]:
  """Cost of a finished run from its recorded config (PTQ runs record their chosen formats)."""
  return row_cost(checkpoint.load_config(workdir))


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


# -- statistics (pure: tested on synthetic numbers) -----------------------------------------------


def interval(diffs: list[float]) -> dict[str, Any]:
  """Mean of paired differences with a two-sided 95 % Student-t interval (None below 2 seeds)."""
  n = len(diffs)
  mean = statistics.fmean(diffs) if diffs else math.nan
  if n < 2:
    return {"n": n, "mean": mean, "lo": None, "hi": None, "se": None}
  se = statistics.stdev(diffs) / math.sqrt(n)
  half = T95.get(n - 1, 1.96) * se
  return {"n": n, "mean": mean, "lo": mean - half, "hi": mean + half, "se": se}


def paired(per_seed: dict[str, dict], base: dict[str, dict]) -> dict[str, Any]:
  """Row minus baseline in points on the seeds both have, with its interval."""
  seeds = sorted(set(per_seed) & set(base), key=int)
  return {**interval([100 * (per_seed[s]["test"] - base[s]["test"]) for s in seeds]),
          "seeds": seeds}


def row_stats(per_seed: dict[str, dict[str, float]],
              baseline_per_seed: dict[str, dict[str, float]]) -> dict[str, Any]:
  """Mean ± sd over seeds, and the paired difference to the baseline on the same seeds."""
  seeds = sorted(per_seed, key=int)
  test = [100 * per_seed[s]["test"] for s in seeds]
  delta = paired(per_seed, baseline_per_seed)
  first = per_seed[seeds[0]]
  return {
      "n": len(seeds),
      "test_mean": statistics.fmean(test),
      "test_sd": statistics.stdev(test) if len(test) > 1 else None,
      "validation_mean": statistics.fmean(100 * per_seed[s]["validation"] for s in seeds),
      "delta": delta,
      "delta_mean": delta["mean"] if delta["n"] else None,
      "weight_bits": first["weight_bits"],
      "memory_kib": first["memory_kib"],
      "train_seconds": statistics.fmean(per_seed[s]["train_seconds"] for s in seeds),
      "cost": first.get("cost"),
  }


def verdict(ci: dict[str, Any], limit: float, strict: bool = False) -> str:
  """PASS if the whole interval is >= limit, FAIL if all of it is below, else INCONCLUSIVE.

  `strict` (an "ahead of" / "helps" claim): PASS needs the whole interval above the limit and
  FAIL is the whole interval at or below it, so two rows that never differ are not "ahead".
  """
  if ci["lo"] is None:
    return "INCONCLUSIVE"
  if ci["lo"] > limit if strict else ci["lo"] >= limit:
    return "PASS"
  if ci["hi"] <= limit if strict else ci["hi"] < limit:
    return "FAIL"
  return "INCONCLUSIVE"


def _fmt_ci(ci: dict[str, Any]) -> str:
  if ci["lo"] is None:
    return f"{ci['mean']:+.2f} (n={ci['n']}, no interval)"
  return f"{ci['mean']:+.2f} [{ci['lo']:+.2f}, {ci['hi']:+.2f}] (n={ci['n']})"


def best_esb(stats: dict[str, dict[str, Any]], bits: int) -> str | None:
  """The ESB row at `bits` with the best mean validation accuracy (k is chosen on validation)."""
  names = [n for n, s in stats.items() if re.fullmatch(rf"esb/W{bits}A{bits}-k\d", n)]
  return max(names, key=lambda n: stats[n]["validation_mean"], default=None)


@dataclasses.dataclass(frozen=True)
class Claim:
  """`row` - `baseline` (paired, points) must be >= `limit`; `row` may be chosen per report."""

  text: str
  row: str | Callable[[dict], str | None]
  baseline: str
  limit: float
  strict: bool = False  # 'ahead of' / 'helps': a difference of exactly zero does not pass

  def rows(self, stats: dict) -> list[str]:
    row = self.row(stats) if callable(self.row) else self.row
    return [r for r in (row, self.baseline) if r]


def claims(profile: Profile) -> list[Claim]:
  """The issue's claims and each paper's isolated ingredient, with this table's limits."""
  lim = profile.limits
  esb = lambda b: (lambda stats: best_esb(stats, b))  # noqa: E731
  out = [Claim(f"uniform W4A4 within {lim['uniform/W4A4']:g} points of float", "uniform/W4A4",
               "float/FT", -lim["uniform/W4A4"]),
         Claim(f"uniform W2A2 within {lim['uniform/W2A2']:g} points of float", "uniform/W2A2",
               "float/FT", -lim["uniform/W2A2"]),
         Claim(f"NUUQ 4 levels within {lim['nuuq/N4']:g} points of float", "nuuq/N4", "float/FT",
               -lim["nuuq/N4"]),
         Claim(f"NUUQ 3 levels within {lim['nuuq/N3']:g} points of float", "nuuq/N3", "float/FT",
               -lim["nuuq/N3"]),
         Claim(f"Liss W4A4 within {lim['liss/W4A4']:g} point of float", "liss/W4A4", "float/FT",
               -lim["liss/W4A4"])]
  for b in (3, 4):
    out += [Claim(f"ESB (k picked on validation) ahead of uniform at W{b}A{b}", esb(b),
                  f"uniform/W{b}A{b}", 0.0, strict=True),
            Claim(f"ESB (k picked on validation) ahead of PoT at W{b}A{b}", esb(b),
                  f"pot/W{b}A{b}", 0.0, strict=True)]
  out += [Claim("ESB's distribution-difference loss helps (W3A3-k2 vs dda.weight=0)",
                "esb/W3A3-k2", "esb/W3A3-k2-noDDA", 0.0, strict=True),
          Claim("NUUQ's re-clustering helps (N4 vs levels fitted once)", "nuuq/N4",
                "nuuq/N4-norecluster", 0.0, strict=True),
          Claim("NUUQ's re-clustering helps (N3 vs levels fitted once)", "nuuq/N3",
                "nuuq/N3-norecluster", 0.0, strict=True),
          Claim("MXQN's mixed choice beats all-fixed activations at W6 A5-4",
                "ptq/MXQN W6 mixed A5-4", "ptq/MXQN W6 fixed A5-4", 0.0, strict=True),
          Claim("MXQN's mixed choice beats all-fixed activations at W8 A8",
                "ptq/MXQN W8 mixed A8", "ptq/MXQN W8 fixed A8", 0.0, strict=True)]
  return out


def run_checks(results: dict[str, dict[str, dict]], stats: dict[str, dict[str, Any]],
               profile: Profile) -> list[dict[str, Any]]:
  """Every claim: PASS / FAIL / INCONCLUSIVE by its paired interval, SKIP if a row is missing."""
  out = []
  if profile.float_target and results.get("float"):
    # One-sample: the float runs' accuracies against the target (the interval of their mean).
    ci = interval([100 * r["test"] - profile.float_target for r in results["float"].values()])
    out.append({"claim": f"float reaches {profile.float_target:g} % (mean over seeds)",
                "status": verdict(ci, 0.0), "rows": ["float"], "ci": ci, "near_limit": False,
                "detail": f"float - {profile.float_target:g} % = {_fmt_ci(ci)} points; "
                          "needs >= +0"})
  table_rows = {"float", *profile.rows}
  for claim in claims(profile):
    involved = claim.rows(stats)  # an ESB claim with no ESB row has only its baseline here
    if profile.rows and (len(involved) < 2 or not set(involved) <= table_rows):
      continue  # a claim about rows this table does not have
    row = claim.row(stats) if callable(claim.row) else claim.row
    missing = [r for r in (row, claim.baseline) if not r or not results.get(r)]
    if missing:
      what = missing[0] or "its ESB rows"
      out.append({"claim": claim.text, "status": "SKIP", "detail": f"{what} was not run",
                  "rows": claim.rows(stats), "ci": None})
      continue
    ci = paired(results[row], results[claim.baseline])
    status = verdict(ci, claim.limit, claim.strict)
    near = (status == "INCONCLUSIVE" and ci["se"] is not None
            and abs(ci["mean"] - claim.limit) <= 2 * ci["se"])
    out.append({
        "claim": claim.text, "status": status, "rows": [row, claim.baseline], "ci": ci,
        "near_limit": near,
        "detail": f"{row} - {claim.baseline} = {_fmt_ci(ci)} points; needs >= {claim.limit:+g}"})
  return out


# -- the report ------------------------------------------------------------------------------------


def _pm(mean: float, sd: float | None) -> str:
  return f"{mean:.2f} ± {sd:.2f} %" if sd is not None else f"{mean:.2f} %"


def describe(spec: dict[str, Any]) -> str:
  """The quantizer's short label (as in summary.json), or its spec if it is not registered."""
  if not spec:
    return "float"
  try:
    return quantizers.from_dict(spec).describe()
  except ValueError:
    return ", ".join(f"{k}={v}" for k, v in spec.items())


def _row_description(row: Row) -> str:
  if row.method == "float":
    return "float, fine-tuned as long as the rows"
  if row.method == "ptq":
    extra = ", ".join(f"{k.split('.')[-1]}={v}" for k, v in row.overrides)
    return f"configs/{row.config}.py" + (f" ({extra})" if extra else "")
  return f"{describe(row.weight)} / {describe(row.act)}"


def build_report(rows: list[Row], results: dict[str, dict[str, dict]], status: dict[str, str],
                 profile: Profile | None = None, **header) -> dict[str, Any]:
  """Everything <stem>.md/.json hold: header, per-seed numbers, stats per row, checks."""
  profile = profile or PROFILES["mnist5k"]
  float_runs = results.get("float", {})
  entries = [{"name": "float", "method": "float", "label": "", "describe": "float, from scratch",
              "bits": 32, "act_bits": 32, "tier": 0, "baseline": "float",
              "status": status.get("float", "ok"), "per_seed": float_runs,
              "stats": row_stats(float_runs, float_runs) if float_runs else None}]
  for row in rows:
    per_seed = results.get(row.name, {})
    base = results.get(row.baseline, {})
    entries.append({
        "name": row.name, "method": row.method, "label": row.label, "bits": row.bits,
        "act_bits": row.act_bits or 32, "tier": row.tier, "baseline": row.baseline,
        "describe": _row_description(row), "weight": row.weight, "act": row.act,
        "overrides": [list(o) for o in row.overrides], "status": status.get(row.name, "ok"),
        "per_seed": per_seed, "stats": row_stats(per_seed, base) if per_seed else None})
  stats = {e["name"]: {**e["stats"], "bits": e["bits"]} for e in entries if e["stats"]}
  return {**header, "dataset": profile.dataset, "title": profile.title,
          "test_images": profile.test_images, "rows": entries,
          "checks": run_checks(results, stats, profile)}


def markdown(report: dict[str, Any]) -> str:
  """<stem>.md from the report (see `build_report`)."""
  quick = " (QUICK: 1 seed, short schedule; not the results table)" if report["quick"] else ""
  done, planned = report.get("runs_done", 0), report.get("runs_planned", 0)
  partial = ""
  if planned and done < planned:
    partial = (f"**PARTIAL: {done} of {planned} planned runs have finished; the sweep is "
               "resumable (same command), and rows and claims below use only finished runs.**")
  point = report["test_images"] / 100
  lines = [
      f"# Accuracy of every method: {report['title']}{quick}", "",
      f"Generated by `{report['command']}` on {report['date']}, {report['machine']}.", "",
      *([f"Runs: {report['runs_note']}", ""] if report.get("runs_note") else []),
      *([partial, ""] if partial else []),
      f"Seeds {', '.join(report['seeds'])}; float trained from scratch for "
      f"{report['epochs']['float']:g} epochs; every fine-tuned row, and `float/FT` (the float run "
      f"continued in float), train {report['epochs']['fine_tune']:g} more epochs from that "
      "seed's float checkpoint. PTQ rows quantize the float checkpoint without training. "
      f"Test split: {report['test_images']:,} images, so **one test image is "
      f"{100 / report['test_images']:g} points** and one point is {point:g} images.", "",
      "Test accuracy is the mean ± sd over seeds. Δ is the paired difference against the row's "
      "baseline (`float/FT` for fine-tuned rows, `float` for PTQ rows) on the same seeds, in "
      "points, with a two-sided 95 % Student-t interval. W / A bits: the middle layers' stored "
      "weight bits averaged over all Conv/Dense weights (the first and last layers keep 8-bit "
      "weights; NUUQ "
      "counts log2 N) and the middle layers' input bits. Memory and mult. cost: the cost model's "
      "(quantjax.cost; what is stored, and the multiplier's operand widths) reduction against the "
      "same network at all-8-bit; float tensors (the image into the first layer, the logits) count "
      "32 bits.",
      "",
      "| method | setting | quantizers (middle layers) | W bits | A bits | test acc | Δ vs "
      "baseline [95 % CI] | memory / mult. cost, change vs all-8-bit | seeds | train s |",
      "|---|---|---|---|---|---|---|---|---|---|",
  ]
  for entry in report["rows"]:
    s = entry.get("stats")
    if s is None:
      lines.append(f"| {entry['method']} | {entry['label']} | {entry['describe']} | | | "
                   f"{entry['status'] if entry['status'] != 'ok' else 'not run yet'} | | | 0 | |")
      continue
    d = s["delta"]
    delta = "" if entry["name"] == "float" or not d["n"] else _fmt_ci(d).replace(
        f" (n={d['n']})", "").replace(f" (n={d['n']}, no interval)", "")
    seeds = str(s["n"]) if entry["status"] == "ok" else f"{s['n']} ({entry['status']})"
    cost = s.get("cost")
    cost = (" / ".join(f"{-100 * cost[k]:+.0f} %" for k in ("memory_bits", "mult_cost"))
            if cost else "")
    abits = "" if entry["act_bits"] >= 32 else str(entry["act_bits"])
    lines.append(f"| {entry['method']} | {entry['label']} | {entry['describe']} | "
                 f"{s['weight_bits']:.2f} | {abits} | {_pm(s['test_mean'], s['test_sd'])} | "
                 f"{delta} | {cost} | {seeds} | "
                 f"{'' if math.isnan(s['train_seconds']) else format(s['train_seconds'], '.0f')} |")
  lines += ["", "## Claims (paired 95 % intervals; computed from the table)", ""]
  lines += [f"- {c['status']}: {c['claim']}: {c['detail']}" for c in report["checks"]]
  return "\n".join(lines) + "\n"


def pareto_front(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
  """The points no other point beats on both cost (lower) and accuracy (higher), by cost."""
  front, best = [], -math.inf
  for x, y in sorted(points, key=lambda p: (p[0], -p[1])):
    if y > best:
      front.append((x, y))
      best = y
  return front


def plot_pareto(report: dict[str, Any], path: str) -> None:
  """Accuracy against memory and against multiplication cost, with each Pareto frontier."""
  import matplotlib  # the optional 'plots' extra: only plotting needs it

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  markers = {"uniform": "o", "pact": "s", "pot": "v", "log": "^", "esb": "D", "nuuq": "P",
             "liss": "X", "ptq": "*", "float": "h"}
  entries = [e for e in report["rows"] if e["stats"] is not None and e["stats"].get("cost")
             and e["name"] != "float"]
  fig, axes = plt.subplots(1, 2, figsize=(12, 5), sharey=True)
  for ax, key, xlabel in ((axes[0], "memory_kib", "memory (KiB: weights, biases, activations "
                                                  "per image, level tables)"),
                          (axes[1], "mult_cost_abs", "multiplication cost (Goyal et al.: Σ "
                                                     "operand bits × multiplies)")):
    seen = set()
    points = []
    for i, e in enumerate(entries):
      s = e["stats"]
      x, y = s["cost"][key], s["test_mean"]
      points.append((x, y))
      method = e["method"]
      # 8-bit activations hollow, low-bit activations filled: the two do not compare.
      hollow = e["act_bits"] >= 8
      color = f"C{list(markers).index(method) % 10}"
      ax.errorbar(x * (1 + 0.012 * ((i % 5) - 2)), y, yerr=s["test_sd"] or 0.0,
                  marker=markers.get(method, "o"), markersize=7, capsize=2, linestyle="none",
                  color=color, markerfacecolor="none" if hollow else color, alpha=0.85,
                  label=None if method in seen else method)
      seen.add(method)
    front = pareto_front(points)
    ax.plot([p[0] for p in front], [p[1] for p in front], color="k", linewidth=1,
            drawstyle="steps-post", label="Pareto frontier")
    float_entry = report["rows"][0]
    if float_entry["stats"] is not None:
      ax.axhline(float_entry["stats"]["test_mean"], color="gray", linestyle="--",
                 label="float (from scratch)")
    if points:
      ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.grid(alpha=0.3, which="both")
  axes[0].set_ylabel("test accuracy (%), mean over seeds; bars: ± 1 sd over seeds")
  axes[1].legend(fontsize="small", title="filled: A ≤ 5 bits; hollow: A = 8", title_fontsize=8)
  fig.suptitle(report["title"] + (" (quick)" if report["quick"] else "")
               + (" — PARTIAL" if report.get("runs_done", 0) < report.get("runs_planned", 0)
                  else ""))
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def write_outputs(report: dict[str, Any], out_dir: str, stem: str = "accuracy") -> None:
  os.makedirs(out_dir, exist_ok=True)
  # Rewritten after every run of a sweep: a kill mid-write must not lose the last table.
  write_text_atomic(os.path.join(out_dir, f"{stem}.md"), markdown(report))
  write_text_atomic(os.path.join(out_dir, f"{stem}.json"),
                    json.dumps(report, indent=1, sort_keys=True) + "\n")
  plot_pareto(report, os.path.join(out_dir, "pareto.png" if stem == "accuracy"
                                   else f"{stem}_pareto.png"))


def write_level_figures(workdirs: dict[str, str], layer: str, out_dir: str,
                        prefix: str = "levels") -> list[str]:
  """<prefix>_<method>.png: `layer`'s trained weights and levels, for each run in `workdirs`."""
  from quantjax.reports import levels  # matplotlib only when figures are written

  written = []
  for name, workdir in workdirs.items():
    result = levels.layer_levels(workdir, layer)
    path = os.path.join(out_dir, f"{prefix}_{name.split('/')[0]}.png")
    levels.plot_levels(result, path, title=(
        f"{name}: {result.layer}" + ("" if result.channel is None else
                                      f" channel {result.channel}") +
        f", {result.quantizer}, {len(result.levels)} levels"))
    written.append(path)
  return written


# -- the program -----------------------------------------------------------------------------------


def plan_runs(rows: list[Row], seeds: list[str]) -> list[tuple[Row, str]]:
  """(row, seed) in the order they run: by tier, then row, then seed."""
  return [(row, seed) for tier in sorted({r.tier for r in rows})
          for row in rows if row.tier == tier for seed in seeds]


def parse_shard(text: str) -> tuple[int, int]:
  """'i/n' -> (i, n) with 0 <= i < n."""
  match = re.fullmatch(r"(\d+)/(\d+)", text.strip())
  if not match or not int(match[1]) < int(match[2]):
    raise app.UsageError(f"--shard={text!r}: expected i/n with 0 <= i < n, e.g. 0/4")
  return int(match[1]), int(match[2])


def _progress(i: int, total: int, start: float) -> str:
  """The line printed after each run: '[i/total, h:mm:ss elapsed, ~h:mm:ss left at this pace]'."""
  elapsed = time.perf_counter() - start
  eta = elapsed / max(i, 1) * (total - i)
  return (f"[{i}/{total}, {progress.format_duration(elapsed)} elapsed, ~"
          f"{progress.format_duration(eta)} left at this pace]")


def main(argv):
  try:
    sweep_main(argv)
  except preemption.Preempted as e:  # the tables written so far stand; the same command resumes
    sys.exit(f"accuracy_table: {e}")


def sweep_main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  profile = PROFILES[_DATASET.value]
  quick = _QUICK.value
  seeds = _SEEDS.value[:1] if quick and not flags.FLAGS["seeds"].present else _SEEDS.value
  rows = select_rows(sweep(profile), quick, _ONLY.value, _MAX_TIER.value)
  root = os.path.join(_WORKDIR.value, profile.runs_dir or profile.dataset,
                      "quick" if quick else "full")
  out_dir = _OUT_DIR.value
  if quick and not flags.FLAGS["out_dir"].present:
    out_dir = os.path.join(out_dir, "quick")
  if not _REPORT_ONLY.value:  # the process's CPU devices, as train.py would choose them
    experiment.choose_cpu_devices(make_config(None, 0, "", quick, profile))  # for its float run
  start = time.perf_counter()
  results: dict[str, dict[str, dict]] = {}
  status: dict[str, str] = {}
  header = dict(command=shlex.join(["python", "bench/accuracy_table.py", *sys.argv[1:]]),
                date=datetime.date.today().isoformat(), machine=machine(), quick=quick,
                runs_note=_RUNS_NOTE.value,
                seeds=seeds, epochs={"float": make_config(None, 0, "", quick, profile).num_epochs,
                                     "fine_tune": make_config(sweep(profile)[1], 0, "", quick,
                                                              profile).num_epochs})

  def float_dir(seed: str) -> str:
    return os.path.abspath(os.path.join(root, f"seed{seed}", "float"))

  def do_run(row: Row | None, seed: str) -> None:
    name = "float" if row is None else row.name
    if row is not None and not registered(row):
      status[name] = "quantizer not registered yet"
      return
    if row is not None and seed not in results.get("float", {}):
      return  # its float run failed
    workdir = float_dir(seed) if row is None else os.path.join(
        root, f"seed{seed}", re.sub(r"[^A-Za-z0-9_.-]+", "_", name))
    if _REPORT_ONLY.value and not os.path.exists(os.path.join(workdir, "summary.json")):
      return
    t0 = time.perf_counter()
    try:
      config = make_config(row, int(seed), "" if row is None else float_dir(seed), quick,
                           profile)
      rec = record(run(config, workdir))
      rec["cost"] = workdir_cost(workdir) if row is not None and row.method == "ptq" else (
          row_cost(config))
      results.setdefault(name, {})[seed] = rec
      progress.write(f"{name:<24} seed {seed}: test {100 * rec['test']:.2f} %  "
                     f"({time.perf_counter() - t0:.0f} s)", sys.stdout)
    except preemption.Preempted:
      raise  # a signal stops the sweep (the run saved a checkpoint; the same command resumes)
    except Exception as e:  # noqa: BLE001  one failed row (e.g. a NaN loss) must not end the sweep
      first_line = (str(e).splitlines() or [type(e).__name__])[0]
      status[name] = f"failed: {first_line[:120]}"
      progress.write(f"{name:<24} seed {seed}: {status[name]}", sys.stdout)

  def write(planned: int) -> dict[str, Any]:
    done = sum(len(per_seed) for per_seed in results.values())  # failed runs are missing
    report = build_report(rows, results, status, profile, runs_done=done, runs_planned=planned,
                          **header)
    write_outputs(report, out_dir, profile.stem)
    return report

  plan = [(None, s) for s in seeds] + plan_runs(rows, seeds)
  if _SHARD.value:
    index, count = parse_shard(_SHARD.value)
    missing = [s for s in seeds if not os.path.exists(os.path.join(float_dir(s), "summary.json"))]
    if index and missing:
      raise app.UsageError(f"--shard={_SHARD.value}: the float runs of seeds {','.join(missing)} "
                           f"are not finished under {root}; run shard 0 (which trains them) or "
                           "the floats first")
    plan = [(None, s) for s in seeds] + plan_runs(rows, seeds)[index::count]
  # The whole sweep's bar (on a terminal; the '[i/N, ...]' lines say the same in a log).
  runs_bar = progress.bar(total=len(plan), desc="sweep", unit="run")
  for i, (row, seed) in enumerate(plan):
    runs_bar.set_postfix_str(f"{'float' if row is None else row.name} seed {seed}")
    do_run(row, seed)
    runs_bar.update(1)
    if not _REPORT_ONLY.value:
      write(len(plan))
      progress.write(_progress(i + 1, len(plan), start), sys.stdout)
  # More seeds where a claim is undecided and close to its limit.
  report = write(len(plan))
  extra = [s for s in _EXTRA_SEEDS.value if s and s not in seeds]
  close = {r for c in report["checks"] if c.get("near_limit") for r in c["rows"]}
  if extra and not quick and not _SHARD.value and (close or _REPORT_ONLY.value):
    # A sweep runs the extra seeds for the rows near their limit; --report_only reads back every
    # extra-seed run that exists (whichever rows a sweep, or --only, ran them for).
    more = [(None, s) for s in extra] + [(row, s) for row in rows for s in extra
                                         if _REPORT_ONLY.value or row.name in close]
    counted = sum(len(per_seed) for per_seed in results.values())
    total = len(plan) + len(more)
    runs_bar.total = total
    for i, (row, seed) in enumerate(more):
      runs_bar.set_postfix_str(f"{'float' if row is None else row.name} seed {seed}")
      do_run(row, seed)
      runs_bar.update(1)
      if not _REPORT_ONLY.value:
        write(total)
        progress.write(_progress(len(plan) + i + 1, total, start), sys.stdout)
    if _REPORT_ONLY.value:  # planned: what was found
      total = len(plan) + sum(len(per_seed) for per_seed in results.values()) - counted
    header["seeds"] = seeds + [s for s in extra if s in results.get("float", {})]
    report = write(total)
  runs_bar.close()
  if _LEVELS_LAYER.value:
    first = os.path.join(root, f"seed{seeds[0]}")
    runs = {name: os.path.join(first, name.replace("/", "_")) for name in LEVEL_ROWS
            if any(r.name == name for r in rows) and seeds[0] in results.get(name, {})}
    prefix = "levels" if profile.stem == "accuracy" else f"{profile.stem}_levels"
    for path in write_level_figures(runs, _LEVELS_LAYER.value, out_dir, prefix):
      print(f"wrote {path}")
  print(markdown(report))
  print(f"wrote {out_dir}/{profile.stem}.md, .json and the Pareto figure; this invocation took "
        f"{time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
  logging.set_verbosity(logging.WARNING)
  app.run(main)
