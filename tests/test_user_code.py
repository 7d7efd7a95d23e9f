"""A quantizer from a user's file, the whole way: train, eval, export, emulate, cost, by the CLIs.

The quantizer lives in a file this test writes (no module of the package or the suite knows it);
the run names the file once (`config.imports`) and every tool on its workdir imports it again.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from configs import test as test_config
from quantjax import quantizers, user_code
from quantjax.train import cli
from tests.intsim import reference

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_NAME = "user_ternary"

# Written only from README "Adding a quantizer": weights in {-α, 0, α}, α = max |w| per tensor.
_USER_FILE = '''
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from quantjax import quantizers
from quantjax.quantizers import Quantizer, codes


@jax.custom_vjp
def _ternary(x, alpha):
  return alpha * jnp.clip(jnp.round(x / alpha), -1.0, 1.0)


def _ternary_fwd(x, alpha):
  return _ternary(x, alpha), (x, alpha)


def _ternary_bwd(residuals, g):
  x, alpha = residuals
  return jnp.where(jnp.abs(x) <= alpha, g, 0.0), jnp.zeros_like(alpha)


_ternary.defvjp(_ternary_fwd, _ternary_bwd)


@quantizers.register("user_ternary")
@dataclasses.dataclass(frozen=True, kw_only=True)
class Ternary(Quantizer):
  bits: int = 2  # a signed 2-bit code

  def validate_role(self, role):
    if role != "weight":
      raise ValueError("user_ternary quantizes weights only")

  def init(self, x, role):
    self.validate_role(role)
    return {}, {}

  def alpha(self, x):
    return jnp.maximum(jnp.max(jnp.abs(jax.lax.stop_gradient(x))), 1e-8)

  def apply(self, x, params, state, role, training):
    return _ternary(x, self.alpha(x)), state

  def levels(self, params, state, x=None, role="weight"):
    return jnp.array([-1.0, 0.0, 1.0]) * self.alpha(x)

  def weight_codes(self, kernel, params, state):
    scale = codes.per_channel(np.asarray(self.alpha(kernel)), kernel.shape[-1])
    out = self.apply(jnp.asarray(kernel), params, state, "weight", False)[0]
    values = codes.integer_values(self.describe(), out, scale)
    return codes.plain_codes(self.registry_name, values, scale, self.bits)
'''


def _forget(module_name: str) -> None:
  """As a fresh process would be: the user's quantizer unregistered, its module not imported."""
  quantizers.registry._REGISTRY.pop(_NAME, None)
  sys.modules.pop(module_name, None)


@pytest.fixture
def user_file(tmp_path):
  path = tmp_path / "my_ternary.py"
  path.write_text(_USER_FILE)
  yield str(path)
  _forget("my_ternary")


def _tool(*args):
  proc = subprocess.run([sys.executable, *args], cwd=_ROOT, capture_output=True, text=True,
                        timeout=300, env={**os.environ, "JAX_PLATFORMS": "cpu"})
  return proc


def test_a_quantizer_in_a_user_file_trains_evaluates_exports_emulates_and_costs(
    user_file, data_dir, tmp_path):
  from quantjax.cost.model import cost_report
  from quantjax.export import export_run
  from quantjax.intsim import Accelerator, Emulator, evaluate
  from quantjax.train import train_and_evaluate

  config = test_config.get_config()
  config.data_dir, config.tensorboard, config.num_devices = data_dir, False, 1
  config.imports = (user_file,)
  config.quant.rules = ({"pattern": "conv2|fc1|fc2", "weight": {"name": _NAME}},)
  workdir = str(tmp_path / "run")
  assert user_code.import_for_config(config) == [user_file]
  summary = train_and_evaluate(config, workdir)
  with open(os.path.join(workdir, "config.json")) as f:
    assert json.load(f)["imports"] == [user_file]  # the record names the file, by absolute path

  _forget("my_ternary")  # what eval.py and the other tools start from
  with pytest.raises(ValueError, match=f"unknown quantizer '{_NAME}'"):
    quantizers.get(_NAME)
  assert user_code.import_for_workdir(workdir) == [user_file]  # nothing repeated
  exp, variables, _ = evaluate.load_run(workdir, None)
  assert [exp.plan.get(n).weight.registry_name for n in ("conv2", "fc1", "fc2")] == [_NAME] * 3
  kernel = np.asarray(variables["params"]["fc1"]["kernel"])
  fake_kernel = np.asarray(exp.plan.get("fc1").weight.apply(kernel, {}, {}, "weight", False)[0])
  assert len(np.unique(fake_kernel)) == 3  # ternary: {-α, 0, α}
  graph = export_run(exp, variables)
  images, labels = evaluate.raw_split(exp.dataset, "test")
  images = images[:64]
  out, _ = Emulator(graph, Accelerator())(images)
  np.testing.assert_array_equal(out, reference.run(graph, images)[0])  # bit-exact
  rows = {row["layer"]: row for row in cost_report(exp.layers, exp.plan)["layers"]}
  assert rows["fc1"]["weight_bits"] == 2 and rows["conv1"]["weight_bits"] == 8

  # The command-line tools on the workdir, with nothing repeated.
  _forget("my_ternary")
  proc = _tool("eval.py", f"--workdir={workdir}", "--mode=int", "--batch_size=500",
               f"--output={tmp_path / 'eval_int.json'}")
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert "top-1 agreement" in proc.stdout
  with open(tmp_path / "eval_int.json") as f:
    result = json.load(f)
  assert result["accuracy_fakequant"] == pytest.approx(summary["accuracy"]["test"])
  assert result["agreement"] >= 0.8  # a one-step model: near-tied logits flip on rounding


def test_an_import_that_fails_is_one_line_naming_the_module(tmp_path):
  broken = tmp_path / "broken_quantizers.py"
  broken.write_text("import numpy\nraise RuntimeError('oops\\nsecond line')\n")
  with pytest.raises(ValueError) as e:
    user_code.import_modules([str(broken)])
  assert str(e.value) == (f"cannot import {str(broken)!r} (--import / config.imports): "
                          "RuntimeError: oops")
  assert "broken_quantizers" not in sys.modules
  with pytest.raises(ValueError, match=r"cannot import 'no_such_module_xyz' .*ModuleNotFound"):
    user_code.import_modules(["no_such_module_xyz"])
  with pytest.raises(SystemExit) as exit_:  # train.py's flag parsing, before the config loads
    cli.parse_flags(["train.py", "--config=configs/test.py", f"--import={broken}"])
  assert exit_.value.code == f"error: {e.value}"


def test_flag_values_and_normalise(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  argv = ["--config=c.py", "--import=a.py", "--import", "pkg.mod", "--imports=x", "--import=a.py"]
  assert user_code.flag_values(argv) == ["a.py", "pkg.mod", "a.py"]
  assert user_code.normalise(user_code.flag_values(argv)) == [str(tmp_path / "a.py"), "pkg.mod"]



def test_a_file_is_imported_once_and_again_after_an_edit(user_file):
  """A notebook cell that rewrites the quantizer's file and imports it gets the new version."""
  user_code.import_modules([user_file])
  first = sys.modules["my_ternary"]
  user_code.import_modules([user_file])
  assert sys.modules["my_ternary"] is first  # unchanged: not executed twice
  with open(user_file, "a") as f:
    f.write("\nEDITED = True\n")
  os.utime(user_file, ns=(0, os.stat(user_file).st_mtime_ns + 10**9))  # coarse clocks
  user_code.import_modules([user_file])
  again = sys.modules["my_ternary"]
  assert again is not first and again.EDITED
  assert quantizers.get(_NAME) is again.Ternary  # the edited class replaced the old one
  broken = open(user_file).read() + "\nraise RuntimeError('bad edit')\n"
  with open(user_file, "w") as f:
    f.write(broken)
  os.utime(user_file, ns=(0, os.stat(user_file).st_mtime_ns + 2 * 10**9))
  with pytest.raises(ValueError, match="bad edit"):
    user_code.import_modules([user_file])
  assert sys.modules["my_ternary"] is again  # a failed edit keeps the last good module


def test_a_run_whose_quantizer_no_import_registers_says_how_to_fix_it(tmp_path, user_file):
  """A quantizer defined in a notebook cell trains, but a tool in another process cannot find it."""
  quant = {"weight": {"name": "uniform", "bits": 4},
           "rules": [{"pattern": "fc1", "weight": {"name": _NAME}}], "bias": {"name": "float"}}
  run = tmp_path / "run"
  run.mkdir()
  (run / "config.json").write_text(json.dumps({"quant": quant, "imports": []}))
  _forget("my_ternary")
  with pytest.raises(ValueError) as e:
    user_code.import_for_workdir(str(run))
  assert str(e.value) == (
    f"run {str(run)!r} uses quantizer {_NAME!r}, which no imported module registers (imports: "
    "none); a quantizer defined in a notebook cell or a script's __main__ cannot be imported "
    "again: define it in a module and name it in config.imports or with --import")
  assert user_code.import_for_workdir(str(run), [user_file]) == [user_file]  # found this way
  (run / "config.json").write_text(json.dumps({"quant": quant, "imports": [user_file]}))
  _forget("my_ternary")
  assert user_code.import_for_workdir(str(run)) == [user_file]  # or recorded by the run
