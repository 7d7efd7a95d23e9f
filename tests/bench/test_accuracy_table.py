"""bench/accuracy_table.py without training: the sweep, the configs, the table, the checks."""

import dataclasses
import importlib
import json

import pytest

from bench import accuracy_table as table
from quantjax import models
from quantjax.intercept import discover_layers, plan_from_config, sample_input
from quantjax.train import checkpoint

METHOD_CONFIGS = ["uniform_w4a4", "pact", "nuuq", "liss", "esb", "pot", "log"]
SCHEDULE = ("num_epochs", "learning_rate", "warmup_epochs", "batch_size", "optimizer", "schedule",
            "weight_decay", "init_from", "model", "dataset")


@pytest.fixture(scope="module")
def lenet_layers():
  model = models.get_model("lenet5", num_classes=10)
  return discover_layers(model, sample_input((28, 28, 1)), train=False)


def _describe(lq):
  return (lq.weight.describe() if lq.weight else None, lq.act.describe() if lq.act else None)


# -- the method configs --------------------------------------------------------------------------


@pytest.mark.parametrize("name", METHOD_CONFIGS)
def test_method_config_resolves_for_lenet5(name, lenet_layers):
  config = importlib.import_module(f"configs.{name}").get_config()
  plan = plan_from_config(config.quant, lenet_layers).as_dict()
  assert list(plan) == ["conv1", "conv2", "fc1", "fc2", "fc3"]
  # First and last layers: the baseline's 8-bit uniform weights whatever the method; the image
  # stays float.
  assert _describe(plan["conv1"]) == ("uniform8/channel/lsq", None)
  assert plan["fc3"].weight.describe() == "uniform8/channel/lsq"
  method = {"uniform_w4a4": "uniform"}.get(name, name)
  middle = [plan[p] for p in ("conv2", "fc1", "fc2")]
  quantizer_names = {lq.weight.registry_name for lq in middle} | {
      lq.act.registry_name for lq in middle}
  assert method in quantizer_names


@pytest.mark.parametrize("name", METHOD_CONFIGS)
def test_method_configs_share_the_fine_tuning_schedule(name):
  baseline = importlib.import_module("configs.uniform_w4a4").get_config()
  config = importlib.import_module(f"configs.{name}").get_config()
  assert {f: config[f] for f in SCHEDULE} == {f: baseline[f] for f in SCHEDULE}
  assert config.init_from == ""  # documented as required on the command line
  assert config.num_epochs < importlib.import_module("configs.float").get_config().num_epochs


def test_esb_config_weighs_the_dda_loss():
  config = importlib.import_module("configs.esb").get_config()
  assert config.dda.weight > 0
  assert config.quant.weight.alpha == "learned" and config.quant.weight.dda_loss != "none"


# -- the sweep -----------------------------------------------------------------------------------


def test_sweep_has_the_issue_rows():
  names = [row.name for row in table.sweep()]
  assert len(names) == len(set(names))
  required = (
      [f"uniform/W{b}A{b}" for b in (2, 3, 4, 8)]
      + [f"pot/W{b}A{b}" for b in (3, 4)] + [f"log/W{b}A{b}" for b in (3, 4)]
      + [f"esb/W{b}A{b}-k{k}" for b in (3, 4, 5) for k in range(1, b)]
      + [f"nuuq/N{n}" for n in (3, 4, 5, 8)] + [f"liss/W{b}A{b}" for b in (3, 4)])
  assert set(required) <= set(names)
  rows = {row.name: row for row in table.sweep()}
  assert all(rows[f"nuuq/N{n}"].weight["container_bits"] == 8 for n in (3, 4, 5, 8))
  assert rows["log/W3A3"].weight["base_root"] == 2  # base √2
  assert set(table.QUICK_ROWS) <= set(names)
  # Each paper's own ingredient, isolated, and the fair baseline.
  assert {"float/FT", "esb/W3A3-k2-noDDA", "nuuq/N4-norecluster", "ptq/MXQN W6 fixed A5-4",
          "ptq/fixed-point search"} <= set(names)
  assert rows["esb/W3A3-k2-noDDA"].overrides == (("dda.weight", 0.0),)
  assert rows["nuuq/N4-norecluster"].weight["recluster_every"] == 0
  assert rows["uniform/W4A4"].baseline == "float/FT" and rows["ptq/MXQN W8 mixed A8"].baseline == (
      "float")


def test_select_rows():
  rows = table.sweep()
  assert [r.name for r in table.select_rows(rows, True, "")] == [
      r.name for r in rows if r.name in table.QUICK_ROWS]
  assert {r.name for r in table.select_rows(rows, False, "nuuq/N[34]$")} == {"nuuq/N3", "nuuq/N4"}
  assert {r.tier for r in table.select_rows(rows, False, "", max_tier=1)} == {1}


@pytest.mark.parametrize("dataset", ["mnist5k", "fashion_mnist"])
def test_every_row_config_resolves_for_lenet5(lenet_layers, dataset):
  profile = table.PROFILES[dataset]
  for row in table.sweep(profile):
    config = table.make_config(row, 1, "/runs/float", quick=False, profile=profile)
    assert config.dataset == dataset and config.init_from == "/runs/float", row.name
    if row.method in ("float", "ptq"):
      continue
    plan = plan_from_config(config.quant, lenet_layers)
    assert plan.get("fc1").weight.registry_name == row.weight["name"], row.name
    assert plan.get("fc1").act.registry_name == row.act["name"], row.name
    assert config.init_from == "/runs/float" and config.seed == 1 and not config.tensorboard
  float_config = table.make_config(None, 2, "", quick=True, profile=profile)
  assert not float_config.quant.enabled
  assert float_config.num_epochs == table.QUICK_EPOCHS["float"]


def test_fashion_float_ft_trains_as_long_as_the_rows_in_float():
  profile = table.PROFILES["fashion_mnist"]
  rows = {r.name: r for r in table.sweep(profile)}
  ft = table.make_config(rows["float/FT"], 0, "/f", quick=False, profile=profile)
  esb = table.make_config(rows["esb/W3A3-k2"], 0, "/f", quick=False, profile=profile)
  assert not ft.quant.enabled and esb.quant.enabled
  for field in ("num_epochs", "learning_rate", "warmup_epochs", "batch_size", "augment",
                "dataset", "init_from"):
    assert ft[field] == esb[field], field
  scratch = table.make_config(None, 0, "", quick=False, profile=profile)
  assert scratch.num_epochs > ft.num_epochs and scratch.init_from == ""


def test_make_config_applies_overrides():
  row = table.Row("esb", "x", dict(name="esb"), dict(name="esb", signed=False),
                  overrides=(("dda.weight", 0.25), ("learning_rate", 5e-4)))
  config = table.make_config(row, 0, "/f", quick=True)
  assert config.dda.weight == 0.25 and config.learning_rate == 5e-4
  assert config.num_epochs == table.QUICK_EPOCHS["fine_tune"]


def test_run_reads_back_a_finished_run_and_refuses_another_config(tmp_path):
  config = table.make_config(table.sweep()[0], 0, "/f", quick=True)
  checkpoint.record_config(config, str(tmp_path))
  (tmp_path / "summary.json").write_text(json.dumps({"accuracy": {"test": 0.5}}))
  assert table.run(config, str(tmp_path)) == {"accuracy": {"test": 0.5}}
  config.seed = 7
  with pytest.raises(ValueError, match=r"different config \(seed: 0 -> 7\)"):
    table.run(config, str(tmp_path))


def test_config_diff_ignores_fields_only_one_side_has():
  recorded = {"seed": 0, "quant": {"weight": {"bits": 4}, "old_field": 1}}
  current = {"seed": 0, "quant": {"weight": {"bits": 3}, "new_field": 2}, "source_dir": ""}
  assert table.config_diff(recorded, current) == ["quant.weight.bits: 4 -> 3"]
  assert table.config_diff(recorded, {**recorded, "new": 1}) == []


def test_record_averages_weight_bits_over_weights():
  summary = {"accuracy": {"test": 0.98, "validation": 0.97}, "model_size_kib": 3.5,
             "train_seconds": 12.0,
             "layers": [{"weight_bits": 8, "num_weights": 100},
                        {"weight_bits": 1.5849625, "num_weights": 300}]}
  rec = table.record(summary)
  assert rec["weight_bits"] == pytest.approx((800 + 300 * 1.5849625) / 400)
  assert rec["test"] == 0.98 and rec["memory_kib"] == 3.5


# -- statistics on hand-worked numbers ----------------------------------------------------------


def test_interval_is_the_student_t_interval_of_the_paired_differences():
  ci = table.interval([1.0, 2.0, 3.0])  # mean 2, sd 1, se 1/sqrt(3), t(2) = 4.303
  assert ci["mean"] == pytest.approx(2.0)
  assert ci["lo"] == pytest.approx(2.0 - 4.303 / 3 ** 0.5, abs=1e-6)
  assert ci["hi"] == pytest.approx(2.0 + 4.303 / 3 ** 0.5, abs=1e-6)
  assert table.interval([0.5])["lo"] is None


def test_paired_uses_only_shared_seeds_in_points():
  row = {"0": {"test": 0.90}, "1": {"test": 0.91}, "5": {"test": 0.5}}
  base = {"0": {"test": 0.89}, "1": {"test": 0.92}, "2": {"test": 0.99}}
  p = table.paired(row, base)
  assert p["seeds"] == ["0", "1"] and p["n"] == 2
  assert p["mean"] == pytest.approx(0.0)  # +1 and -1 points


@pytest.mark.parametrize("lo, hi, limit, expected", [
    (-0.2, 0.3, -0.5, "PASS"),  # the whole interval above -0.5
    (-0.6, 0.3, -0.5, "INCONCLUSIVE"),
    (-1.4, -0.6, -0.5, "FAIL"),  # the whole interval below
    (0.1, 0.9, 0.0, "PASS"),
    (-0.1, 0.9, 0.0, "INCONCLUSIVE"),
])
def test_verdict_is_decided_by_the_interval(lo, hi, limit, expected):
  assert table.verdict({"lo": lo, "hi": hi}, limit) == expected


@pytest.mark.parametrize("lo, hi, expected", [
    (0.0, 0.0, "FAIL"),  # two rows that never differ: not "ahead"
    (0.0, 0.4, "INCONCLUSIVE"),
    (0.1, 0.4, "PASS"),
    (-0.3, 0.0, "FAIL"),
])
def test_ahead_claims_need_a_difference(lo, hi, expected):
  assert table.verdict({"lo": lo, "hi": hi}, 0.0, strict=True) == expected


def test_pareto_front_keeps_only_undominated_points():
  points = [(10, 90.0), (5, 85.0), (20, 89.0), (5, 80.0), (30, 91.0), (8, 85.0)]
  assert table.pareto_front(points) == [(5, 85.0), (10, 90.0), (30, 91.0)]


# -- the report and its claims on synthetic per-seed numbers --------------------------------------


def _seed(test, validation=None, bits=4.06, kib=31.4):
  return {"test": test, "validation": validation if validation is not None else test,
          "weight_bits": bits, "memory_kib": kib, "train_seconds": 1.0}


FLOAT = {s: _seed(t, bits=32.0, kib=241.0) for s, t in (("0", 0.900), ("1", 0.910), ("2", 0.905))}
# The fine-tuned float baseline: +0.2 points on every seed.
FLOAT_FT = {s: _seed(r["test"] + 0.002, bits=32.0, kib=241.0) for s, r in FLOAT.items()}
PROFILE = table.PROFILES["fashion_mnist"]


def _rows():
  rows = {row.name: row for row in table.sweep(PROFILE)}
  return [rows[n] for n in ("float/FT", "uniform/W4A4", "uniform/W3A3", "pot/W3A3", "esb/W3A3-k1",
                            "esb/W3A3-k2", "nuuq/N4", "nuuq/N3", "liss/W4A4")]


def _shift(base, points, jitter=(0.0, 0.0, 0.0), **kw):
  return {s: _seed(r["test"] + (points + j) / 100, **kw)
          for (s, r), j in zip(base.items(), jitter, strict=True)}


def _results(**changes):
  results = {
      "float": FLOAT, "float/FT": FLOAT_FT,
      # NUUQ 4: -0.3 +- 0.05: [-0.42, -0.18], the whole interval above -0.5 -> PASS.
      "nuuq/N4": _shift(FLOAT_FT, -0.3, (-0.05, 0.0, 0.05), bits=2.09),
      # NUUQ 3: -1.5 on every seed but one: interval entirely below -1.0 -> FAIL.
      "nuuq/N3": _shift(FLOAT_FT, -1.5, (-0.1, 0.0, 0.1), bits=1.65),
      # uniform W4A4: -0.4 with a wide spread: interval crosses -0.5 -> INCONCLUSIVE.
      "uniform/W4A4": _shift(FLOAT_FT, -0.4, (-0.6, 0.0, 0.6)),
      "uniform/W3A3": _shift(FLOAT_FT, -1.0),
      "liss/W4A4": _shift(FLOAT_FT, -0.5, (-0.1, 0.0, 0.1)),
      "pot/W3A3": _shift(FLOAT_FT, -2.0),
      # k=1 is best on test but worse on validation: the claim must use k=2 (validation's pick).
      "esb/W3A3-k1": {s: _seed(r["test"] + 0.05, validation=0.5) for s, r in FLOAT_FT.items()},
      "esb/W3A3-k2": _shift(FLOAT_FT, -0.5, (-0.1, 0.0, 0.1)),
  }
  results.update(changes)
  return results


def _report(results, status=None, **extra):
  return table.build_report(_rows(), results, status or {}, PROFILE, command="python bench/x.py",
                            date="2026-01-01", machine="2 cores", quick=False,
                            seeds=["0", "1", "2"], epochs={"float": 30.0, "fine_tune": 5.0},
                            **extra)


def test_claims_from_synthetic_numbers():
  checks = {c["claim"]: c for c in _report(_results())["checks"]}
  status = {k: c["status"] for k, c in checks.items()}
  assert status["NUUQ 4 levels within 0.5 points of float"] == "PASS"
  assert status["NUUQ 3 levels within 1 points of float"] == "FAIL"
  assert status["uniform W4A4 within 0.5 points of float"] == "INCONCLUSIVE"
  assert status["uniform W2A2 within 3 points of float"] == "SKIP"
  # ESB k=2 (validation's pick) is 0.5 ahead of uniform W3A3 on every seed (+- 0.1): PASS,
  # though k=1 would look better on test.
  esb = checks["ESB (k picked on validation) ahead of uniform at W3A3"]
  assert esb["status"] == "PASS" and esb["rows"] == ["esb/W3A3-k2", "uniform/W3A3"]
  assert esb["ci"]["mean"] == pytest.approx(0.5)
  assert status["ESB (k picked on validation) ahead of PoT at W3A3"] == "PASS"
  assert status["ESB (k picked on validation) ahead of uniform at W4A4"] == "SKIP"
  # The INCONCLUSIVE uniform claim sits within two standard errors of its limit: more seeds.
  assert checks["uniform W4A4 within 0.5 points of float"]["near_limit"]


def test_fine_tuned_rows_pair_with_float_ft_not_float():
  report = _report(_results())
  rows = {e["name"]: e for e in report["rows"]}
  assert rows["uniform/W3A3"]["stats"]["delta"]["mean"] == pytest.approx(-1.0)  # vs float/FT
  assert rows["float/FT"]["stats"]["delta"]["mean"] == pytest.approx(0.2)  # vs float


def test_markdown_says_partial_and_what_one_image_is_worth():
  text = table.markdown(_report(_results(), runs_done=5, runs_planned=9))
  assert "**PARTIAL: 5 of 9 planned runs have finished" in text
  assert "one test image is 0.01 points" in text
  assert "Generated by `python bench/x.py` on 2026-01-01, 2 cores." in text
  line = next(ln for ln in text.splitlines() if ln.startswith("| nuuq | N4 |"))
  assert "| -0.30 [-0.42, -0.18] |" in line and "| 2.09 | 8 |" in line
  assert "- FAIL: NUUQ 3 levels within 1 points of float: nuuq/N3 - float/FT = -1.50" in text
  complete = table.markdown(_report(_results(), runs_done=9, runs_planned=9))
  assert "PARTIAL" not in complete


def test_cost_column_shows_the_change_against_all_8_bit():
  results = _results()
  for seeds in results.values():
    for rec in seeds.values():
      rec["cost"] = {"memory_bits": 0.48, "mult_cost": 0.672, "bops": -0.309,
                     "memory_kib": 20.0, "mult_cost_abs": 1e6}
  text = table.markdown(_report(results))
  assert "| -48 % / -67 % | 3 | 1 |" in text


def test_row_cost_of_the_uniform_w4a4_row_matches_the_cost_model(tmp_path):
  row = next(r for r in table.sweep() if r.name == "uniform/W4A4")
  (tmp_path / "float").mkdir()
  cost = table.row_cost(table.make_config(row, 0, str(tmp_path / "float"), False))
  # conv2, fc1, fc2 at W4/A4 and 8-bit conv1/fc3 weights: about half the memory of all-8-bit.
  assert 0.4 < cost["memory_bits"] < 0.6 and cost["mult_cost"] > 0.6


def test_written_files(tmp_path):
  pytest.importorskip("matplotlib")
  results = _results()
  for seeds in results.values():
    for i, rec in enumerate(seeds.values()):
      rec["cost"] = {"memory_bits": 0.5, "mult_cost": 0.6, "bops": 0.1,
                     "memory_kib": 10.0 + i, "mult_cost_abs": 1e5 * (i + 1)}
  report = _report(results, status={"pot/W3A3": "failed: loss is nan at step 3"})
  table.write_outputs(report, str(tmp_path), "fashion")
  assert (tmp_path / "fashion.md").read_text() == table.markdown(report)
  data = json.loads((tmp_path / "fashion.json").read_text())
  nuuq4 = next(r for r in data["rows"] if r["name"] == "nuuq/N4")
  assert nuuq4["per_seed"]["1"]["test"] == pytest.approx(0.909)
  assert "| 3 (failed: loss is nan at step 3) |" in (tmp_path / "fashion.md").read_text()
  assert (tmp_path / "fashion_pareto.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_quick_reports_say_so():
  report = _report({"float": FLOAT})
  report["quick"] = True
  assert "QUICK" in table.markdown(report).splitlines()[0]
  assert all(c["status"] == "SKIP" for c in report["checks"] if c["rows"] != ["float"])


def test_plan_runs_goes_tier_by_tier_with_every_seed():
  rows = table.sweep(PROFILE)
  plan = table.plan_runs(rows, ["0", "1"])
  tiers = [row.tier for row, _ in plan]
  assert tiers == sorted(tiers) and len(plan) == 2 * len(rows)
  first = {row.name for row, _ in plan[:2 * sum(r.tier == 1 for r in rows)]}
  assert {"float/FT", "uniform/W4A4", "esb/W3A3-k2", "nuuq/N3"} <= first


def test_every_level_figure_row_is_in_the_sweep_one_per_method():
  names = {row.name: row.method for row in table.sweep()}
  assert set(table.LEVEL_ROWS) <= set(names)
  methods = [names[n] for n in table.LEVEL_ROWS]
  assert sorted(methods) == sorted(set(table.METHOD_CONFIGS))  # one figure per method


def test_float_target_is_a_one_sample_interval():
  # FLOAT: 90.0, 91.0, 90.5 -> minus 91.0: -1.0, 0.0, -0.5; mean -0.5, sd 0.5, se 0.2887,
  # t(2) = 4.303: [-1.742, +0.742] -> INCONCLUSIVE; 89.0 % would make it PASS.
  check = _report({"float": FLOAT})["checks"][0]
  assert check["claim"] == "float reaches 91 % (mean over seeds)"
  assert check["status"] == "INCONCLUSIVE"
  assert check["ci"]["mean"] == pytest.approx(-0.5)
  assert check["ci"]["lo"] == pytest.approx(-0.5 - 4.303 * 0.5 / 3 ** 0.5, abs=1e-6)
  low = table.build_report(_rows(), {"float": FLOAT}, {},
                           dataclasses.replace(PROFILE, float_target=89.0), command="x",
                           date="d", machine="m", quick=False, seeds=["0"], epochs={})
  assert low["checks"][0]["status"] == "PASS"


def test_resnet20_table_runs_its_rows_and_claims_only():
  profile = table.PROFILES["fashion_mnist_resnet20"]
  rows = table.sweep(profile)
  assert [r.name for r in rows] == ["float/FT", "uniform/W2A2", "uniform/W4A4", "nuuq/N4"]
  config = table.make_config(rows[2], 1, "/runs/float", False, profile)
  assert config.model == "resnet20" and config.num_epochs == 8.0 and config.seed == 1
  assert config.quant.weight.bits == 4 and config.init_from == "/runs/float"
  report = table.build_report(rows, {"float": FLOAT}, {}, profile, command="x", date="d",
                              machine="m", quick=False, seeds=["0"], epochs={})
  claims = [c["claim"] for c in report["checks"]]
  assert claims == ["float reaches 93.5 % (mean over seeds)",
                    "uniform W4A4 within 0.5 points of float",
                    "uniform W2A2 within 3 points of float",
                    "NUUQ 4 levels within 0.5 points of float"]


def test_resnet20_short_schedule_keeps_the_rows_and_shortens_float_and_rows_alike():
  full, short = (table.PROFILES[n] for n in ("fashion_mnist_resnet20",
                                              "fashion_mnist_resnet20_short"))
  rows = table.sweep(short)
  assert [r.name for r in rows] == [r.name for r in table.sweep(full)]
  assert short.runs_dir != full.runs_dir and short.stem != full.stem  # never mixed with 'full'
  float_config = table.make_config(None, 0, "", False, short)
  assert (float_config.num_epochs, float_config.learning_rate) == (12.0, 0.1)
  assert float_config.warmup_epochs == pytest.approx(0.6)  # 2 of 40 epochs, scaled
  for row in rows:  # float/FT and every quantized row fine-tune equally long
    assert table.make_config(row, 0, "/f", False, short).num_epochs == 3.0
  nuuq = table.make_config(rows[-1], 0, "/f", False, short).quant.weight
  assert nuuq.freeze_at < 3 * 54000 // 128  # NUUQ's levels freeze inside the 3 epochs
  assert table.make_config(None, 0, "", False, full).num_epochs == 40.0


def test_resnet20_config_rejects_an_unknown_schedule():
  from configs.fashion import resnet20

  assert resnet20.get_config("float").num_epochs == 40.0
  assert resnet20.get_config("nuuq,short").num_epochs == 3.0
  with pytest.raises(ValueError, match="unknown schedule 'fast'; use one of full, short"):
    resnet20.get_config("float,fast")


def test_shards_split_the_plan_without_overlap():
  rows = table.sweep(PROFILE)
  plan = table.plan_runs(rows, ["0", "1", "2"])
  shards = [plan[i::4] for i in range(4)]
  assert sorted(sum(shards, []), key=plan.index) == plan
  assert table.parse_shard("3/4") == (3, 4)
  for bad in ("4/4", "1", "a/b", "-1/2"):
    with pytest.raises(table.app.UsageError, match="expected i/n"):
      table.parse_shard(bad)
