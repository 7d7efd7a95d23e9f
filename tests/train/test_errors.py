"""Bad input is refused with a one-line error before any work, and nothing written is lost."""

import os

import pytest

from quantjax.train import train_and_evaluate


def _fails(config, workdir, match):
  with pytest.raises(ValueError, match=match) as e:
    train_and_evaluate(config, workdir)
  assert "\n" not in str(e.value), "errors must be one line"


@pytest.mark.parametrize(
    ("field", "value", "match"),
    [
        ("dataset", "mnits", r"unknown dataset 'mnits'"),
        ("model", "lenet7", r"unknown model 'lenet7'.*lenet5"),
        ("quant.weight.name", "esbb", r"unknown quantizer 'esbb'; valid quantizers: .*uniform"),
        ("quant.weight.bits", 17, r"bits=17 is out of range; valid: integers 2 to 16"),
        ("quant.act.bits", 1, r"bits=1 is out of range"),
        ("quant.layers", "conv9", r"regex 'conv9' matches no layer; layers are: conv1, conv2"),
        ("optimizer", "adagrad", r"optimizer='adagrad' is not valid; choose one of sgd, adam"),
    ],
)
def test_bad_config_value(tiny_config, tmp_path, field, value, match):
  node = tiny_config
  *parents, leaf = field.split(".")
  for p in parents:
    node = node[p]
  node[leaf] = value
  workdir = str(tmp_path / "run")
  _fails(tiny_config, workdir, match)
  assert not os.path.exists(os.path.join(workdir, "checkpoints"))


def test_incompatible_workdir_is_refused_and_kept(tiny_config, tmp_path):
  workdir = str(tmp_path / "run")
  train_and_evaluate(tiny_config, workdir)
  before = open(os.path.join(workdir, "summary.json")).read()
  steps_before = sorted(os.listdir(os.path.join(workdir, "checkpoints")))
  tiny_config.quant.weight.bits = 3
  _fails(tiny_config, workdir, r"holds checkpoints made with quant=.*use a new --workdir")
  tiny_config.quant.weight.bits = 4
  tiny_config.model = "sequential"
  _fails(tiny_config, workdir, r"made with model=\"lenet5\", but this config has "
                               r"model=\"sequential\"")
  assert open(os.path.join(workdir, "summary.json")).read() == before
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == steps_before


def test_corrupt_checkpoint_gives_clear_error(tiny_config, tmp_path):
  from quantjax.train import evaluate_workdir

  workdir = str(tmp_path / "run")
  train_and_evaluate(tiny_config, workdir)
  ckpt = os.path.join(workdir, "checkpoints", "6")
  for root, _, files in os.walk(ckpt):
    for f in files:
      path = os.path.join(root, f)
      with open(path, "r+b") as fh:
        fh.truncate(max(os.path.getsize(path) // 3, 1))
  with pytest.raises(ValueError, match=r"checkpoint .*6 cannot be restored"):
    evaluate_workdir(workdir)


def test_eval_of_missing_workdir(tmp_path):
  from quantjax.train import evaluate_workdir

  with pytest.raises(ValueError, match="config.json not found"):
    evaluate_workdir(str(tmp_path / "nothing"))


def test_fine_tuning_config_requires_init_from(tmp_path):
  from configs import uniform_w4a4

  config = uniform_w4a4.get_config()
  _fails(config, str(tmp_path / "run"), r"fine-tunes a float checkpoint: set --config.init_from")
  config.init_from = str(tmp_path / "missing")
  _fails(config, str(tmp_path / "run"), r"init_from='.*missing' holds no checkpoints")
