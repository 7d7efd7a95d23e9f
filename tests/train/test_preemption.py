"""A real `train.py` process: SIGTERM/SIGINT save the current step and a resume ends bit-identical.

The process runs train.py's `main` with one change, made by a small driver: from the fourth batch
on, the data pipeline waits 0.5 s per batch, so that the test's signal arrives mid-run. A second
driver poisons a batch with NaN: the process ends with one line and a clean exit.
"""

import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from quantjax.train import checkpoint, train_and_evaluate
from quantjax.workdir import Workdir
from tests.train.conftest import tiny_run_config

_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
_STEPS = 10
_DRIVER = """
import os, runpy, sys, time
import numpy as np
import quantjax.data

real = quantjax.data.prefetch
fault = os.environ["QUANTJAX_TEST_FAULT"]

def prefetch(iterator, size=2, put=None):
  for i, batch in enumerate(real(iterator, size=size, put=put)):
    if fault == "slow" and i >= 3:
      time.sleep(0.5)
    if fault == "nan" and i == 2:
      batch = {**batch, "image": batch["image"] * np.nan}
    yield batch

quantjax.data.prefetch = prefetch
sys.argv = ["train.py", *sys.argv[1:]]
runpy.run_path("train.py", run_name="__main__")
"""


def _config(data_dir):
  config = tiny_run_config(data_dir)
  config.num_epochs = _STEPS * 32 / 3500
  config.checkpoint_every_steps = 4
  return config


def _start(data_dir, workdir, fault):
  config = _config(data_dir)
  overrides = [f"--config.{k}={config[k]}" for k in (
      "data_dir", "batch_size", "eval_batch_size", "num_epochs", "checkpoint_every_steps",
      "log_every_steps", "tensorboard", "num_devices")]
  return subprocess.Popen(
      [sys.executable, "-c", _DRIVER, "--config=configs/test.py", f"--workdir={workdir}",
       *overrides], cwd=_ROOT, env={**os.environ, "QUANTJAX_TEST_FAULT": fault},
      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _train_steps(workdir):
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.exists(path):
    return []
  lines = [json.loads(line) for line in open(path) if line.endswith("\n")]
  return [m["step"] for m in lines if "train/loss" in m]


@pytest.fixture(scope="module")
def straight(data_dir, tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("straight") / "run")
  train_and_evaluate(_config(data_dir), workdir)
  return checkpoint.restore_variables(workdir)[0]


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signal_saves_current_step_and_resume_is_bit_identical(signum, data_dir, tmp_path,
                                                               straight):
  workdir = str(tmp_path / "run")
  proc = _start(data_dir, workdir, "slow")
  deadline = time.monotonic() + 240
  while not any(s >= 4 for s in _train_steps(workdir)):
    assert proc.poll() is None, proc.communicate()[1][-2000:]
    assert time.monotonic() < deadline, "the run did not reach step 4"
    time.sleep(0.05)
  proc.send_signal(signum)
  _, err = proc.communicate(timeout=120)
  assert proc.returncode == 128 + signum, err[-2000:]
  assert "Traceback" not in err
  stopped = [line for line in err.splitlines() if line.startswith("stopped by")]
  assert len(stopped) == 1, err[-2000:]
  name = signal.Signals(signum).name
  step = int(stopped[0].split(f"stopped by {name} at step ")[1].split(":")[0])
  assert 4 <= step < _STEPS
  assert Workdir(workdir).checkpoint_steps()[-1] == step

  summary = train_and_evaluate(_config(data_dir), workdir)
  assert summary["resumed_from"] == step and summary["step"] == _STEPS
  resumed, _ = checkpoint.restore_variables(workdir)
  for a, b in zip(jax.tree_util.tree_leaves(straight), jax.tree_util.tree_leaves(resumed),
                  strict=True):
    np.testing.assert_array_equal(a, b)
  assert _train_steps(workdir) == list(range(1, _STEPS + 1))  # every step once


def test_nan_loss_ends_the_process_with_one_line(data_dir, tmp_path):
  workdir = str(tmp_path / "run")
  proc = _start(data_dir, workdir, "nan")
  _, err = proc.communicate(timeout=240)
  assert proc.returncode == 1, err[-2000:]
  assert "Traceback" not in err and "Fatal Python error" not in err
  assert err.splitlines()[-1] == (
      "error: loss is nan at step 3; stopped, no checkpoint was saved before it")
