"""Quantizer specs that spell out every field, so that any can be overridden on the command line."""

import dataclasses
import importlib
import os
import subprocess
import sys

import ml_collections
import pytest
from absl import flags
from ml_collections import config_flags

from quantjax import models, quantizers
from quantjax.intercept import discover_layers, plan_from_config, sample_input
from quantjax.intercept.plan import check_quant_config
from quantjax.intercept.spec import quantizer_changes, quantizer_spec

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIGS = sorted(f[:-3] for f in os.listdir(os.path.join(ROOT, "configs"))
                 if f.endswith(".py") and f != "__init__.py")


def _fields(name):
  return {f.name for f in dataclasses.fields(quantizers.get(name)) if f.init}


@pytest.mark.parametrize("name", quantizers.names())
def test_spec_holds_every_field_at_its_default(name):
  spec = quantizer_spec(name)
  assert set(spec.keys()) == {"name"} | _fields(name)
  assert quantizers.from_dict(spec.to_dict()) == quantizers.get(name)()


def test_spec_sets_the_given_fields_and_refuses_unknown_ones():
  spec = quantizer_spec("uniform", bits=3, estimator="ste")
  assert quantizers.from_dict(spec.to_dict()) == quantizers.get("uniform")(bits=3, estimator="ste")
  assert spec.get_type("fractional_bits") is int  # `int | None`: a typed placeholder
  with pytest.raises(ValueError, match=r"^quantizer 'uniform' has no field\(s\) estimatr; valid "
                     r"fields: bits, estimator, "):
    quantizer_spec("uniform", estimatr="ste")


def test_changes_list_every_field_of_every_quantizer_and_none_means_unchanged():
  changes = quantizer_changes(bits=8)
  every = set().union(*(_fields(name) for name in quantizers.names()))
  assert set(changes.keys()) == {"name"} | every
  assert {k: v for k, v in changes.to_dict().items() if v is not None} == {"bits": 8}
  floats = quantizer_changes(name="float")
  assert {k: v for k, v in floats.to_dict().items() if v is not None} == {"name": "float"}
  with pytest.raises(ValueError, match=r"^no quantizer has field\(s\) bitz; valid fields: "):
    quantizer_changes(bitz=8)


@pytest.mark.parametrize("config_name", CONFIGS)
def test_every_quantizer_spec_in_the_configs_holds_every_field(config_name):
  quant = importlib.import_module(f"configs.{config_name}").get_config().quant
  every = set().union(*(_fields(name) for name in quantizers.names()))
  checked = 0
  for role in ("weight", "act", "bias", "output"):
    spec = quant.get(role)
    if spec is not None:  # float tensors list every field of every quantizer, to be given one
      fields = every if spec.get("name") in ("float", "none") else _fields(spec["name"])
      assert {"name"} | fields == set(spec.keys()), f"quant.{role}"
      checked += 1
    for where in ("first_layer", "last_layer"):
      change = (quant.get(where) or {}).get(role)
      if not change:  # None (float) or {} (no change): set whole on the command line
        continue
      if change.get("name") not in (None, "float", "none"):  # a complete spec of its own
        assert {"name"} | _fields(change["name"]) == set(change.keys()), f"quant.{where}.{role}"
      else:
        assert {"name"} | every == set(change.keys()), f"quant.{where}.{role}"
      checked += 1
  assert checked >= (2 if quant.enabled else 0)


def _parse(argv):
  """The config of `train.py`'s flags after `argv` (a fresh FlagValues, the same definition)."""
  flag_values = flags.FlagValues()
  config_flags.DEFINE_config_file("config", None, "", flag_values=flag_values, lock_config=True,
                                  sys_argv=argv)
  flag_values(argv)
  return flag_values.config


def _lenet_plan(config):
  layers = discover_layers(models.get_model("lenet5", num_classes=10), sample_input((28, 28, 1)),
                           train=False)
  check_quant_config(config.quant)
  return plan_from_config(config.quant, layers).as_dict()


def test_overrides_of_unspelled_quantizer_fields_rules_and_float_tensors_reach_the_plan():
  config = _parse([
      "train.py", "--config=configs/default.py",
      "--config.quant.weight.estimator=ste",  # a field configs/default.py does not set
      "--config.quant.act.fractional_bits=2", "--config.quant.act.scale_method=pow2",
      "--config.quant.rules=[{'pattern': 'fc1', 'weight': {'bits': 2}}]",
      "--config.quant.first_layer.act={'name': 'uniform', 'bits': 8}",  # the image: None, float
      "--config.quant.last_layer.act={'bits': 8}",  # {}: the default's, unchanged
      "--config.quant.last_layer.weight.granularity=tensor",
      "--config.quant.bias.name=uniform", "--config.quant.bias.bits=8",  # float by default
  ])
  plan = _lenet_plan(config)
  assert plan["conv2"].weight.estimator == "ste" and plan["conv2"].weight.bits == 4
  assert plan["conv2"].act.scale_method == "pow2" and plan["conv2"].act.fractional_bits == 2
  assert plan["fc1"].weight.bits == 2 and plan["fc1"].weight.estimator == "ste"
  assert plan["fc2"].weight.bits == 4
  assert plan["conv1"].act == quantizers.get("uniform")(bits=8)
  assert plan["fc3"].weight.granularity == "tensor" and plan["fc3"].weight.bits == 8
  assert plan["fc3"].act == dataclasses.replace(plan["fc2"].act, bits=8)
  assert plan["fc2"].act.bits == 4
  assert all(plan[layer].bias == quantizers.get("uniform")(bits=8) for layer in plan)
  assert all(plan[layer].output is None for layer in plan)


def test_without_overrides_the_default_plan_is_unchanged():
  plan = _lenet_plan(_parse(["train.py", "--config=configs/default.py"]))
  uniform = quantizers.get("uniform")
  w4 = uniform(bits=4, granularity="channel", scale_method="lsq")
  a4 = uniform(bits=4, signed=False, scale_method="max")
  assert plan["conv1"].weight == dataclasses.replace(w4, bits=8) and plan["conv1"].act is None
  assert plan["conv2"].weight == w4 and plan["conv2"].act == a4
  assert plan["fc3"].weight == dataclasses.replace(w4, bits=8) and plan["fc3"].act == a4
  assert all(plan[layer].bias is None and plan[layer].output is None for layer in plan)


def test_a_rule_with_an_unknown_field_is_one_line():
  quant = ml_collections.ConfigDict(dict(weight=quantizer_spec("uniform"), act=None))
  quant.rules = ({"pattern": "fc1", "wieght": {"bits": 2}},)
  with pytest.raises(ValueError, match=r"quant.rules\[0\].*\(valid fields: pattern, weight, act, "):
    check_quant_config(quant)


@pytest.mark.parametrize("override, message", [
    ("--config.quant.weight.estimatr=ste",
     "error: --config.quant.weight.estimatr: config.quant.weight has no field 'estimatr'; "
     "valid fields: bits, estimator, fractional_bits, "),
    ("--config.num_epoch=3",
     "error: --config.num_epoch: config has no field 'num_epoch'; valid fields: augment, "),
    ("--config.quant.first_layer.act.bits=8",
     "error: --config.quant.first_layer.act.bits: config.quant.first_layer.act is None, not a "
     "group of fields; set it whole, e.g. --config.quant.first_layer.act=\"{'name': "),
])
def test_train_py_unknown_field_is_one_line_naming_the_valid_ones(override, message, tmp_path):
  result = subprocess.run(
      [sys.executable, "train.py", "--config=configs/test.py", f"--workdir={tmp_path}", override],
      cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)
  assert result.returncode != 0
  lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
  assert len(lines) == 1 and lines[0].startswith(message), result.stderr[-2000:]
  assert "Traceback" not in result.stderr
  assert not os.listdir(tmp_path)  # refused before any work
