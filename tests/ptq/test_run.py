"""End to end: a float run, both post-training methods, and eval.py on their workdirs."""

import json
import os

import pytest

from configs import float as float_config
from configs import ptq_fixedpoint, ptq_mxqn
from quantjax import ptq, train


def _tiny(config, data_dir):
  config.data_dir = data_dir
  config.batch_size = 32
  config.eval_batch_size = 250
  config.num_epochs = 12 * 32 / 3500  # 12 steps: above chance, far from converged
  config.tensorboard = False
  config.num_devices = 1
  config.eval_every_epochs = 0.0
  return config


@pytest.fixture(scope="module")
def float_run(tmp_path_factory, data_dir):
  workdir = str(tmp_path_factory.mktemp("float"))
  train.train_and_evaluate(_tiny(float_config.get_config(), data_dir), workdir)
  return workdir


def _ptq_config(module, data_dir, init_from):
  config = _tiny(module.get_config(), data_dir)
  config.init_from = init_from
  config.ptq.calibration_batches = 1
  config.ptq.calibration_batch_size = 64
  if config.ptq.method == "fixedpoint":  # fewer diagonal steps than from 12 bits: a faster test
    config.ptq.start_bits.weight, config.ptq.start_bits.bias, config.ptq.start_bits.output = 6, 4, 6
  return config


@pytest.mark.parametrize("module", [ptq_fixedpoint, ptq_mxqn])
def test_ptq_workdir_evaluates_like_any_other(module, float_run, data_dir, tmp_path):
  config = _ptq_config(module, data_dir, float_run)
  if module is ptq_mxqn:
    config.ptq.weight_bits, config.ptq.act_bits = 6, 5
  else:
    config.ptq.criterion = "agreement"  # the search scores agreement with the float network
  workdir = str(tmp_path / "ptq")
  summary = ptq.run(config, workdir)
  assert summary["quantized"] and summary["step"] == 0
  assert set(summary["cost"]["reduction_vs_8bit"]) >= {"memory_bits", "mult_cost", "bops"}
  for name in ("config.json", "summary.json", "ptq_report.md", "ptq_report.json"):
    assert os.path.exists(os.path.join(workdir, name)), name
  result = train.evaluate_workdir(workdir, split="test")
  assert result["accuracy"] == pytest.approx(summary["accuracy"]["test"])
  saved = json.load(open(os.path.join(workdir, "config.json")))
  rules = {r["pattern"]: r for r in saved["quant"]["rules"]}
  assert set(rules) == {"conv1", "conv2", "fc1", "fc2", "fc3"}
  if module is ptq_fixedpoint:
    assert summary["ptq"]["compilations"] == 1 and summary["ptq"]["evaluations"] > 30
    assert summary["ptq"]["score_float"] == 1.0 and summary["ptq"]["criterion"] == "agreement"
    assert all(r[c]["name"] == "fixed_point" for r in rules.values()
               for c in ("weight", "bias", "output"))
    # The cost report reads the searched widths.
    layer = summary["cost"]["layers"][1]
    assert layer["weight_bits"] == rules["conv2"]["weight"]["bits"]
    assert layer["output_bits"] == rules["conv2"]["output"]["bits"]
  else:
    assert rules["conv1"]["act"] is None
    assert {rules[p]["act"]["name"] for p in ("conv2", "fc1", "fc2", "fc3")} <= {"uniform", "log"}
    assert all(r["weight"]["bits"] == 6 for r in rules.values())
  # A finished workdir is not redone, and another method's or run's workdir is not passed off as
  # this one's result.
  assert ptq.run(config, workdir)["accuracy"] == summary["accuracy"]
  other = _ptq_config(ptq_fixedpoint if module is ptq_mxqn else ptq_mxqn, data_dir, float_run)
  with pytest.raises(ValueError, match="holds a run with a different ptq"):
    ptq.run(other, workdir)
  with pytest.raises(ValueError, match="holds a run with a different mode"):
    ptq.run(config, float_run)  # the float training run itself


def test_bad_configs_fail_before_work(data_dir, tmp_path, float_run):
  config = _ptq_config(ptq_fixedpoint, data_dir, "")
  with pytest.raises(ValueError, match="init_from"):
    ptq.run(config, str(tmp_path / "a"))
  config = _ptq_config(ptq_fixedpoint, data_dir, float_run)
  config.ptq.method = "nope"
  with pytest.raises(ValueError, match="ptq.method='nope'.*fixedpoint, mxqn"):
    ptq.run(config, str(tmp_path / "b"))
  config = _ptq_config(ptq_mxqn, data_dir, float_run)
  config.ptq.force = "conv1=int"
  with pytest.raises(ValueError, match="force"):
    ptq.run(config, str(tmp_path / "c"))
  assert not os.path.exists(tmp_path / "c" / "summary.json")
  config = _ptq_config(ptq_mxqn, data_dir, float_run)
  config.ptq.method = "fixedpoint"  # without the fixed-point fields
  with pytest.raises(ValueError, match="needs ptq.threshold, ptq.tradeoff, ptq.start_bits"):
    ptq.run(config, str(tmp_path / "e"))
  config = _ptq_config(ptq_fixedpoint, data_dir, float_run)
  config.ptq.criterion = "loss"
  with pytest.raises(ValueError, match="criterion='loss'.*accuracy, agreement"):
    ptq.run(config, str(tmp_path / "d"))


@pytest.mark.parametrize("field, value, match", [
    ("min_bits", 0, r"ptq.min_bits=0 is out of range; valid: integers 1 to 16"),
    ("min_bits", 17, r"ptq.min_bits=17 is out of range"),
    ("extra_diagonal_step", "yes", r"ptq.extra_diagonal_step='yes' must be True or False"),
    ("fast_search", 1, r"ptq.fast_search=1 must be True or False"),
])
def test_bad_search_fields_are_one_line_errors(field, value, match, tmp_path):
  config = ptq_fixedpoint.get_config()
  config.init_from = str(tmp_path)  # checked after the ptq block
  os.makedirs(tmp_path / "checkpoints")
  with config.ptq.ignore_type():
    setattr(config.ptq, field, value)
  with pytest.raises(ValueError, match=match):
    ptq.run(config, str(tmp_path / "out"))
