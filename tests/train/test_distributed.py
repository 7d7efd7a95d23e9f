"""Two `train.py --distributed` processes of 2 fake CPU devices each: one run on 4 devices.

The processes find each other at a loopback coordinator (`quantjax.train.launch`) and sum
gradients over gloo. The run is compared with the same config on one process of 4 devices:
- identical: each batch (tests/data/test_distributed_batches.py checks them bit for bit), the
  first step's training accuracy, the number of examples evaluated, and the test accuracy of the
  final weights re-evaluated here (integer counts, whatever the order of the sum);
- within a tolerance: the losses and the weights. gloo sums the devices' gradients in ring order,
  XLA's in-process all-reduce in device order; float addition is not associative, so from the
  first step the gradients differ in their last bits (a float run with SGD ends within 2e-8 of the
  one-process weights). Adam divides each gradient by its own running magnitude, so for gradients
  near zero a last-bit difference can become a whole learning-rate step, and 4-bit rounding then
  moves whole levels: after 8 steps the weights differ by about 0.5 % (relative L2), the losses
  by about 0.5 %. The bounds are 5 % and 3 %, far below what different data or a missing
  gradient sum gives.
Then one process is killed: the other stops by itself with JAX's message within the heartbeat
timeout, and the same command resumes from the last checkpoint and ends bit for bit where the
uninterrupted two-process run ends (same processes, same order of every sum).
"""

import json
import os
import signal
import sys
import time

import jax
import numpy as np
import pytest

from quantjax.train import checkpoint, evaluate_workdir, launch, train_and_evaluate
from quantjax.workdir import Workdir
from tests.train.conftest import tiny_run_config

_STEPS = 8
_HEARTBEAT_S = 10
_FIELDS = ("data_dir", "batch_size", "eval_batch_size", "num_epochs", "checkpoint_every_steps",
           "log_every_steps", "tensorboard")
# Slows every batch from the fifth on, so that a process can be killed between checkpoints.
_SLOW_DRIVER = """
import runpy, sys, time
import quantjax.data

real = quantjax.data.prefetch

def prefetch(iterator, size=2, put=None):
  for i, batch in enumerate(real(iterator, size=size, put=put)):
    if i >= 4:
      time.sleep(1.0)
    yield batch

quantjax.data.prefetch = prefetch
sys.argv = ["train.py", *sys.argv[1:]]
runpy.run_path("train.py", run_name="__main__")
"""


# Each process checks what it gets back from the agreements of `quantjax.train.distributed`.
_AGREEMENT = """
import json, sys, time
from quantjax.train import distributed
distributed.initialize(heartbeat_timeout_s=30)
import jax
lead = jax.process_index() == 0
out = {"signal": distributed.agree_on_signal(None if lead else 15),
       "none": distributed.agree_on_signal(None),
       "step": distributed.from_lead(lambda: 8 if lead else 3),
       "no_step": distributed.from_lead(lambda: None if lead else 3)}
try:
  distributed.raise_lead_error(ValueError("workdir 'w' is in use") if lead else None)
except ValueError as e:
  out["error"] = str(e)
out["first"] = distributed.lead_first(lambda: time.time())
print(json.dumps(out))
"""


def _config(data_dir):
  config = tiny_run_config(data_dir)  # W4A4 LeNet-5, batch 32, checkpoints every 4 steps
  config.num_epochs = _STEPS * 32 / 3500
  config.checkpoint_every_steps = 4
  config.num_devices = 0  # every device of every process
  return config


def _start(data_dir, workdir, logs, cache, *, command=None, heartbeat_s=30):
  config = _config(data_dir)
  args = [f"--config={os.path.join('configs', 'test.py')}", f"--workdir={workdir}",
          *(f"--config.{k}={config[k]}" for k in _FIELDS), "--config.num_devices=0"]
  # The three launches compile the same programs: the persistent cache compiles them once.
  env = {"JAX_COMPILATION_CACHE_DIR": str(cache), "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0"}
  return launch.start(args, 2, devices_per_process=2, heartbeat_timeout_s=heartbeat_s,
                      log_dir=str(logs), command=command, env=env)


def _finish(procs, logs, timeout_s=300):
  try:
    deadline = time.monotonic() + timeout_s
    for i, p in enumerate(procs):
      p.wait(timeout=max(1.0, deadline - time.monotonic()))
      assert p.returncode == 0, _log(logs, i)[-3000:]
  finally:
    launch.stop(procs)


def _log(logs, i):
  return open(os.path.join(logs, f"process_{i}.log")).read()


def _metrics(workdir):
  return [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]


def _params(workdir):
  return checkpoint.restore_variables(workdir)[0]


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
  return tmp_path_factory.mktemp("compilation_cache")


@pytest.fixture(scope="module")
def two_processes(data_dir, tmp_path_factory, cache):
  """An uninterrupted two-process run: (workdir, process log directory)."""
  root = tmp_path_factory.mktemp("two_processes")
  workdir, logs = str(root / "run"), str(root / "logs")
  _finish(_start(data_dir, workdir, logs, cache), logs)
  return workdir, logs


@pytest.fixture(scope="module")
def one_process(data_dir, tmp_path_factory):
  """The same config in this process, on its 4 fake devices."""
  workdir = str(tmp_path_factory.mktemp("one_process") / "run")
  config = _config(data_dir)
  config.num_devices = 4
  train_and_evaluate(config, workdir)
  return workdir


def test_two_processes_train_like_one_process_of_four_devices(two_processes, one_process,
                                                              tmp_path):
  workdir, _ = two_processes
  two, one = Workdir(workdir).read_summary(), Workdir(one_process).read_summary()
  assert two["step"] == one["step"] == _STEPS
  assert two["num_examples"] == one["num_examples"] == {"validation": 500, "test": 1000}
  m2, m1 = _metrics(workdir), _metrics(one_process)
  train2 = [m for m in m2 if "train/loss" in m]
  train1 = [m for m in m1 if "train/loss" in m]
  assert [m["step"] for m in train2] == [m["step"] for m in train1] == list(range(1, _STEPS + 1))
  assert train2[0]["train/accuracy"] == train1[0]["train/accuracy"]  # same batch, same weights
  np.testing.assert_allclose(train2[0]["train/loss"], train1[0]["train/loss"], rtol=1e-6)
  np.testing.assert_allclose([m["train/loss"] for m in train2], [m["train/loss"] for m in train1],
                             rtol=3e-2)
  a = np.concatenate([np.ravel(x) for x in jax.tree_util.tree_leaves(_params(workdir))])
  b = np.concatenate([np.ravel(x) for x in jax.tree_util.tree_leaves(_params(one_process))])
  assert np.linalg.norm(a - b) < 0.05 * np.linalg.norm(b)
  # The two processes' evaluation of their weights, repeated here on one process: the same count
  # of correct test digits (every example counted once), the loss up to the order of its sum.
  again = evaluate_workdir(workdir, split="test", output=str(tmp_path / "eval.json"))
  assert again["num_examples"] == 1000
  assert again["accuracy"] == two["accuracy"]["test"]
  np.testing.assert_allclose(again["loss"], two["loss"]["test"], rtol=1e-6)


def test_one_process_writes_the_workdir_and_orbax_one_checkpoint_per_save(two_processes):
  workdir, logs = two_processes
  wd = Workdir(workdir)
  assert sorted(os.listdir(workdir)) == ["checkpoints", "config.json", "environment.json",
                                         "metrics.jsonl", "summary.json"]  # the lock released
  metrics = _metrics(workdir)
  assert [m["step"] for m in metrics if "train/loss" in m] == list(range(1, _STEPS + 1))
  assert sum("validation/accuracy" in m for m in metrics) == 1
  assert sum("test/accuracy" in m for m in metrics) == 1
  (env,) = wd.environments()
  assert (env["process_count"], env["device_count"], env["mesh_devices"]) == (2, 4, 4)
  assert env["step"] == 0 and env["jax"] == jax.__version__
  # Non-writing processes open the workdir read-only: a write would have failed the run.
  assert "test accuracy:" in _log(logs, 0) and "test accuracy:" not in _log(logs, 1)
  assert "process 1 of 2: 2 of 4 devices" in _log(logs, 1)
  assert sorted(os.listdir(wd.checkpoints_dir)) == ["4", "8"]  # one directory per save
  for step in (4, 8):
    assert wd.intact_step(step) == step  # its manifest matches every file
    assert sorted(os.listdir(wd.step_dir(step))) == [
        "_CHECKPOINT_METADATA", "commit_success.txt", "default", "manifest.json"]


def test_a_killed_process_stops_the_other_and_the_rerun_ends_where_one_run_ends(
    two_processes, data_dir, tmp_path, cache):
  workdir, logs = str(tmp_path / "run"), str(tmp_path / "logs")
  procs = _start(data_dir, workdir, logs, cache, heartbeat_s=_HEARTBEAT_S,
                 command=[sys.executable, "-c", _SLOW_DRIVER])
  try:
    deadline = time.monotonic() + 240
    while not os.path.exists(os.path.join(workdir, "checkpoints", "4", "manifest.json")):
      assert all(p.poll() is None for p in procs), _log(logs, 0)[-3000:]
      assert time.monotonic() < deadline, "the run did not save step 4"
      time.sleep(0.1)
    os.killpg(procs[1].pid, signal.SIGKILL)
    killed = time.monotonic()
    procs[0].wait(timeout=_HEARTBEAT_S + 60)
    stopped_after = time.monotonic() - killed
  finally:
    launch.stop(procs)
  assert procs[0].returncode != 0
  assert stopped_after < _HEARTBEAT_S + 30  # no hang: the coordinator noticed the silence
  assert "another task died" in _log(logs, 0)  # JAX's line, naming the cause
  assert not os.path.exists(os.path.join(workdir, "summary.json"))

  rerun_logs = str(tmp_path / "rerun_logs")
  _finish(_start(data_dir, workdir, rerun_logs, cache), rerun_logs)
  summary = Workdir(workdir).read_summary()
  assert summary["resumed_from"] == 4 and summary["step"] == _STEPS
  for a, b in zip(jax.tree_util.tree_leaves(_params(two_processes[0])),
                  jax.tree_util.tree_leaves(_params(workdir)), strict=True):
    np.testing.assert_array_equal(a, b)
  assert [m["step"] for m in _metrics(workdir) if "train/loss" in m] == list(
      range(1, _STEPS + 1))
  assert summary["accuracy"] == Workdir(two_processes[0]).read_summary()["accuracy"]


def test_processes_agree_on_a_signal_the_checkpoint_and_an_error(tmp_path):
  logs = str(tmp_path / "logs")
  procs = launch.start([], 2, devices_per_process=2, log_dir=logs,
                       command=[sys.executable, "-c", _AGREEMENT])
  _finish(procs, logs, timeout_s=240)
  got = [json.loads(_log(logs, i).strip().splitlines()[-1]) for i in range(2)]
  for g in got:  # process 1's signal stops both; process 0's step and error reach both
    assert (g["signal"], g["none"], g["step"], g["no_step"]) == (15, None, 8, None)
  assert got[0]["error"] == "workdir 'w' is in use"
  assert got[1]["error"] == "process 0: workdir 'w' is in use"
  assert got[0]["first"] < got[1]["first"]  # process 0 prepares first, the other after it
