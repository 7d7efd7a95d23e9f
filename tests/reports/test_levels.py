"""The level plot of a trained layer: one tiny run with a different weight quantizer per layer."""

import os
import subprocess
import sys

import ml_collections
import numpy as np
import pytest

from configs import test as test_config
from quantjax import train
from quantjax.quantizers import esb
from quantjax.reports import levels

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def workdir(data_dir, tmp_path_factory):
  """One training step of LeNet-5 with uniform, liss, nuuq and esb weights on different layers."""
  config = test_config.get_config()
  config.data_dir = data_dir
  config.tensorboard = False
  config.quant.rules = [
      ml_collections.ConfigDict(dict(pattern="conv2", weight=dict(name="liss", bits=3))),
      ml_collections.ConfigDict(dict(pattern="fc1", weight=dict(name="nuuq", num_levels=3))),
      ml_collections.ConfigDict(dict(pattern="fc2", weight=dict(
          name="esb", bits=4, significant_bits=2, granularity="channel", alpha="learned"))),
  ]
  path = str(tmp_path_factory.mktemp("levels_run"))
  train.train_and_evaluate(config, path)
  return path


def test_uniform_per_channel_levels_are_the_channel_grid(workdir, tmp_path):
  result = levels.layer_levels(workdir, "fc3", channel=2)
  assert result.quantizer == "uniform8/channel/lsq" and result.channel == 2
  assert result.weights.shape == (84,)  # fc3's kernel is [84, 10]: one output channel
  assert len(result.levels) == 255  # symmetric 8-bit codes -127..127
  steps = np.diff(result.levels)
  np.testing.assert_allclose(steps, steps[0], rtol=1e-4)
  pytest.importorskip("matplotlib")
  out = tmp_path / "fc3.png"
  levels.plot_levels(result, str(out))
  assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_nuuq_liss_and_esb_levels(workdir, tmp_path):
  nuuq = levels.layer_levels(workdir, "fc1")
  assert nuuq.quantizer.startswith("nuuq3") and nuuq.channel is None
  assert nuuq.weights.size == 400 * 120 and 2 <= len(nuuq.levels) <= 3
  liss = levels.layer_levels(workdir, "conv2")
  assert liss.quantizer.startswith("liss3") and 2 <= len(liss.levels) <= 8
  assert liss.levels[0] < 0 < liss.levels[-1]  # weights are signed
  e = levels.layer_levels(workdir, "f.2")  # a regex naming one layer
  assert e.layer == "fc2" and e.channel == 0
  unit = esb.unit_levels(4, 2)  # {0, ±0.5, ±1, ±1.5, ±2, ±3, ±4, ±6}
  assert len(e.levels) == len(unit) == 15
  ratio = e.levels[unit != 0] / unit[unit != 0]  # every level is α·(unit level), one α
  np.testing.assert_allclose(ratio, ratio[0], rtol=1e-5)
  pytest.importorskip("matplotlib")
  for result in (nuuq, liss, e):
    out = tmp_path / f"{result.layer}.png"
    levels.plot_levels(result, str(out))
    assert out.stat().st_size > 1000


def test_bad_layer_lists_the_valid_ones(workdir):
  with pytest.raises(ValueError, match="valid layers: conv1, conv2, fc1, fc2, fc3"):
    levels.layer_levels(workdir, "fc")
  with pytest.raises(ValueError, match=r"matches 2 \(fc1, fc2\)"):
    levels.layer_levels(workdir, "fc[12]")
  with pytest.raises(ValueError, match="out of range"):
    levels.layer_levels(workdir, "fc3", channel=10)


def test_bad_workdir(tmp_path):
  with pytest.raises(ValueError, match="a quantjax workdir"):
    levels.layer_levels(str(tmp_path / "none"), "fc1")


def test_cli_writes_png_or_one_line_error(workdir, tmp_path):
  pytest.importorskip("matplotlib")
  out = tmp_path / "cli.png"
  run = lambda layer: subprocess.run(  # noqa: E731
      [sys.executable, "-m", "quantjax.reports.levels", f"--workdir={workdir}",
       f"--layer={layer}", f"--out={out}"], cwd=ROOT, capture_output=True, text=True,
      env={**os.environ, "JAX_PLATFORMS": "cpu"})
  ok = run("fc1")
  assert ok.returncode == 0, ok.stderr
  assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  bad = run("nope")
  assert bad.returncode == 1
  errors = [line for line in bad.stderr.splitlines() if line.startswith("error:")]
  assert errors == ["error: --layer='nope' matches no layer with quantized weights; valid layers: "
                    "conv1, conv2, fc1, fc2, fc3"]
