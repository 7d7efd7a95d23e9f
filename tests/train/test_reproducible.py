"""Several CPU devices: the default config trains to the end, and a run repeats bit for bit.

Before `quantjax.train.dispatch`, the default config on 2 or 4 fake CPU devices aborted in an
all-reduce rendezvous (the host ran more than 32 computations ahead of a device; see that module).
"""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from quantjax.train import checkpoint, dispatch, loop, train_and_evaluate
from quantjax.workdir import Workdir

_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
_EPOCHS = 4  # 108 steps of the default config: two log intervals of 50 with no read-back


def _fake_devices(n):
  count = "--xla_force_host_platform_device_count"
  flags = [f for f in os.environ.get("XLA_FLAGS", "").split() if not f.startswith(count)]
  return {**os.environ, "XLA_FLAGS": " ".join([*flags, f"{count}={n}"])}


@pytest.mark.slow
@pytest.mark.parametrize("devices", [2, 4])
def test_default_config_trains_to_the_end_on_fake_cpu_devices(devices, data_dir, tmp_path):
  workdir = str(tmp_path / "run")
  proc = subprocess.run(
      [sys.executable, "train.py", "--config=configs/default.py", f"--workdir={workdir}",
       f"--config.data_dir={data_dir}", f"--config.num_epochs={_EPOCHS}"],
      cwd=_ROOT, env=_fake_devices(devices), capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]  # a rendezvous abort is status -6
  summary = Workdir(workdir).read_summary()
  assert summary["step"] == _EPOCHS * (3500 // 128)
  assert summary["accuracy"]["test"] > 0.9
  (env,) = Workdir(workdir).environments()  # what the result depends on
  assert (env["device_count"], env["mesh_devices"], env["process_count"]) == (devices, devices, 1)
  assert env["visible_cores"] == len(os.sched_getaffinity(0))
  assert env["jax"] == jax.__version__ and env["backend"] == "cpu"


def test_four_devices_keep_a_few_steps_in_flight_and_repeat_bit_for_bit(tiny_config, tmp_path,
                                                                       monkeypatch):
  admitted, unfinished = [], []

  class Recording(dispatch.StepWindow):
    """Counts, after each step is admitted, the steps dispatched and not yet finished."""

    def admit(self, outputs):
      super().admit(outputs)
      admitted.append(outputs)
      unfinished.append(sum(not all(x.is_ready() for x in jax.tree_util.tree_leaves(o))
                            for o in admitted))

  tiny_config.num_devices = 4  # the gradient sum is an all-reduce over the fake devices
  tiny_config.batch_size = 512  # a step takes far longer than its dispatch: the host runs ahead
  tiny_config.num_epochs = 10 / (3500 // 512)  # 10 steps
  tiny_config.log_every_steps = tiny_config.checkpoint_every_steps = 100  # read back at the end
  runs = [str(tmp_path / name) for name in ("a", "b")]
  with monkeypatch.context() as patch:
    patch.setattr(loop.dispatch, "StepWindow", Recording)
    first = train_and_evaluate(tiny_config, runs[0])
  assert len(unfinished) == 10
  # The host does run ahead (without the window, 8 of the 10 were seen unfinished at once), but
  # only so far.
  assert 2 <= max(unfinished) <= dispatch.MAX_STEPS_IN_FLIGHT

  second = train_and_evaluate(tiny_config, runs[1])  # the same seed, again
  a, b = (checkpoint.restore_variables(w)[0] for w in runs)
  for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b), strict=True):
    np.testing.assert_array_equal(x, y)

  def values(workdir):  # every logged value but the timings
    lines = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
    return [{k: v for k, v in m.items() if "steps_per_sec" not in k and "eta" not in k}
            for m in lines]

  assert values(runs[0]) == values(runs[1]) and len(values(runs[0])) == 3  # step 10, eval
  assert (first["accuracy"], first["loss"]) == (second["accuracy"], second["loss"])
