"""The one line for a `--config.<field>` override of a field the config does not have."""

import ml_collections

from quantjax import config_overrides
from quantjax.intercept.spec import quantizer_spec


def _config():
  config = ml_collections.ConfigDict(dict(num_epochs=1.0, model_kwargs={}))
  config.quant = ml_collections.ConfigDict(dict(weight=quantizer_spec("pact"), act=None))
  return config


def test_override_paths_and_config_file_are_read_from_argv():
  argv = ["train.py", "--config", "configs/x.py", "--config.a.b=1", "--noconfig.c", "--workdir=w",
          "--config.a.b=2"]
  assert config_overrides.override_paths(argv) == ["a.b", "c", "a.b"]
  assert config_overrides.config_file(argv) == "configs/x.py"
  assert config_overrides.config_file(["p", "--config=configs/y.py"]) == "configs/y.py"
  assert config_overrides.config_file(["p", "--config.a=1"]) is None


def test_missing_field_names_its_parent_and_the_valid_fields():
  config = _config()
  assert config_overrides.missing_field(config, "quant.weight.alpha_init") is None
  assert config_overrides.missing_field(config, "quant.weight.alpha") == (
      "--config.quant.weight.alpha: config.quant.weight has no field 'alpha'; valid fields: "
      "alpha_init, bits, init_percentile, name")
  assert config_overrides.missing_field(config, "num_epoch").startswith(
      "--config.num_epoch: config has no field 'num_epoch'; valid fields: model_kwargs, "
      "num_epochs, quant")
  assert config_overrides.missing_field(config, "model_kwargs.width").endswith(
      "config.model_kwargs has no field 'width'; valid fields: (none)")
  assert config_overrides.missing_field(config, "quant.act.bits") == (
      "--config.quant.act.bits: config.quant.act is None, not a group of fields; set it whole, "
      "e.g. --config.quant.act=\"{'name': 'uniform', 'bits': 8}\"")
  assert config_overrides.missing_field(config, "num_epochs.x") == (
      "--config.num_epochs.x: config.num_epochs is a float, not a group of fields")
