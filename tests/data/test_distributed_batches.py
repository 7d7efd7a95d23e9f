"""Two processes of 2 fake CPU devices each build the same global batches as one process.

Each process runs a short script (below) under `quantjax.train.launch`: it records the positions
its training reader is asked for, takes training batches from both input pipelines and the
padded evaluation batches with the 4-device batch sharding, and gathers them whole. The test
compares them bit for bit with the one-process batches, and checks that each process read
exactly its half of every batch.
"""

import subprocess
import sys

import numpy as np
import pytest

from quantjax.train import launch

_BATCH, _EVAL_BATCH, _START, _STEPS = 32, 96, 107, 3  # steps 107-109 cross into epoch 1
_SCRIPT = """
import os, sys
import numpy as np
from quantjax.train import distributed
distributed.initialize(heartbeat_timeout_s=30)
import jax
from jax.experimental import multihost_utils
from quantjax import data
from quantjax.train import sharding

data_dir, out, batch_size, start, steps, eval_batch = sys.argv[-6:]
batch_size, start, steps, eval_batch = map(int, (batch_size, start, steps, eval_batch))
ds = data.get_dataset("mnist5k", data_dir=data_dir)
reader, reads = ds._readers["train"], []
read = reader.read
reader.read = lambda positions: (reads.append(np.asarray(positions)), read(positions))[1]
batch = sharding.batch_sharding(sharding.make_mesh(0))
whole = lambda b: jax.tree.map(np.asarray, multihost_utils.process_allgather(b, tiled=True))
got = {}
for pipeline in ("host", "device"):
  batches = ds.train_batches(batch_size=batch_size, seed=5, start_step=start, augment="shift",
                             pipeline=pipeline, sharding=batch)
  for i in range(steps):
    for k, v in whole(next(batches)).items():
      got[f"{pipeline}/{i}/{k}"] = v
for i, b in enumerate(ds.eval_batches("validation", batch_size=eval_batch, sharding=batch)):
  for k, v in whole(b).items():
    got[f"eval/{i}/{k}"] = v
np.savez(os.path.join(out, f"process_{jax.process_index()}.npz"),
         reads=np.stack(reads[:steps]), **got)
"""


@pytest.fixture(scope="module")
def two_processes(data_dir, mnist5k, tmp_path_factory):
  """What each of the two processes saved: {process index: npz contents}."""
  del mnist5k  # prepared once, before the processes read it
  out = tmp_path_factory.mktemp("batches")
  script = out / "batches.py"
  script.write_text(_SCRIPT)
  args = [data_dir, str(out), *map(str, (_BATCH, _START, _STEPS, _EVAL_BATCH))]
  procs = launch.start(args, 2, devices_per_process=2, log_dir=str(out / "logs"),
                       command=[sys.executable, str(script)])
  try:
    for i, p in enumerate(procs):
      assert p.wait(timeout=240) == 0, open(out / "logs" / f"process_{i}.log").read()[-3000:]
  except subprocess.TimeoutExpired:
    pytest.fail("the two processes did not finish in 240 s")
  finally:
    launch.stop(procs)
  return {i: dict(np.load(out / f"process_{i}.npz")) for i in range(2)}


@pytest.mark.parametrize("pipeline", ["host", "device"])
def test_global_training_batches_equal_the_one_process_ones(two_processes, mnist5k, pipeline):
  one = mnist5k.train_batches(batch_size=_BATCH, seed=5, start_step=_START, augment="shift",
                              pipeline=pipeline)
  for i in range(_STEPS):
    expected = {k: np.asarray(v) for k, v in next(one).items()}
    for got in two_processes.values():
      for k in ("image", "label"):
        np.testing.assert_array_equal(got[f"{pipeline}/{i}/{k}"], expected[k])


def test_each_process_reads_only_its_half_of_each_batch(two_processes):
  steps_per_epoch = 3500 // _BATCH
  for i in range(_STEPS):
    epoch, index = divmod(_START + i, steps_per_epoch)
    order = np.random.default_rng([5, epoch]).permutation(3500)
    positions = np.sort(order[index * _BATCH:(index + 1) * _BATCH])
    half = _BATCH // 2
    np.testing.assert_array_equal(two_processes[0]["reads"][i], positions[:half])
    np.testing.assert_array_equal(two_processes[1]["reads"][i], positions[half:])


def test_evaluation_batches_cover_the_split_once_like_one_process(two_processes, mnist5k):
  expected = list(mnist5k.eval_batches("validation", batch_size=_EVAL_BATCH))  # 500 = 5·96 + 20
  got = two_processes[1]
  assert sum(k.startswith("eval/") and k.endswith("/mask") for k in got) == len(expected) == 6
  for i, b in enumerate(expected):
    for k in ("image", "label", "mask"):
      np.testing.assert_array_equal(got[f"eval/{i}/{k}"], b[k])
  assert sum(got[f"eval/{i}/mask"].sum() for i in range(len(expected))) == 500
  # The last batch's 20 real examples are rows 0-19: process 0's; process 1 holds padding only.
  np.testing.assert_array_equal(got["eval/5/mask"], np.r_[np.ones(20), np.zeros(76)])
