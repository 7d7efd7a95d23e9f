"""bench/ptq_table.py without training: each dataset's runs load as configs of that dataset.

The script defines absl flags (--dataset, --workdir) that bench/accuracy_table.py defines too, so
it is imported in a child process, as it runs.
"""

import importlib
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

_PLAN = """
import json, sys
sys.path.insert(0, {bench!r})
from absl import flags
import ptq_table
flags.FLAGS(["ptq_table", "--dataset={dataset}"])
prof = ptq_table.profile()
print(json.dumps({{"workdir": ptq_table.workdir_root(), "models": ptq_table.models(),
                  "runs": {{m: ptq_table.runs(m) for m in ptq_table.models()}},
                  "targets": [prof.loss_target, prof.memory_target, prof.mult_target],
                  "suffix": prof.suffix}}))
"""


def _plan(dataset: str) -> dict:
  code = _PLAN.format(bench=os.path.join(ROOT, "bench"), dataset=dataset)
  out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, capture_output=True,
                       text=True, timeout=120)
  return json.loads(out.stdout.strip().splitlines()[-1])


def _load(config_arg: str):
  """A `--config=` argument (`configs/x.py` or `configs/x.py:arg`) as train.py would load it."""
  path, _, arg = config_arg.partition(":")
  module = importlib.import_module(path.removesuffix(".py").replace("/", "."))
  return module.get_config(arg) if arg else module.get_config()


@pytest.mark.parametrize("dataset,workdir,models", [
    ("mnist5k", "runs/ptq", ["lenet5", "sequential"]),
    ("fashion_mnist", "runs/ptq_fashion", ["sequential"]),
])
def test_every_run_loads_on_its_dataset(dataset, workdir, models):
  plan = _plan(dataset)
  assert (plan["workdir"], plan["models"]) == (workdir, models)
  for model in models:
    runs = plan["runs"][model]
    assert runs[0][0] == "float"
    for name, config_arg, overrides in runs:
      config = _load(config_arg)
      assert config.dataset == dataset, (name, config_arg)
      assert config.mode == ("train" if name == "float" else "ptq"), name
      if name != "float":  # every search starts from this dataset's float run of the model
        assert f"--config.init_from={workdir}/float_{model}" in overrides


def test_fashion_targets_are_the_papers_mnist_reductions():
  plan = _plan("fashion_mnist")
  assert plan["targets"] == [0.01, 0.627, 0.849]
  assert plan["suffix"] == "_fashion"  # the mnist5k table's files are not overwritten
