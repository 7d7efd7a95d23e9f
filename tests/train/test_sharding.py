"""Data parallelism: 4 fake CPU devices give the result of one device."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from quantjax.train import checkpoint, sharding, train_and_evaluate

needs_4 = pytest.mark.skipif(jax.device_count() < 4,
                             reason="needs 4 (fake) devices: see tests/conftest.py")


def _run(config, workdir, n):
  config.num_devices = n
  summary = train_and_evaluate(config, workdir)
  params, _ = checkpoint.restore_variables(workdir)
  losses = [json.loads(line)["train/loss"] for line in open(os.path.join(workdir, "metrics.jsonl"))
            if "train/loss" in line]
  return summary, params, losses


@needs_4
def test_float_training_on_four_devices_matches_one(tiny_config, tmp_path):
  tiny_config.quant.enabled = False
  s1, p1, l1 = _run(tiny_config, str(tmp_path / "d1"), 1)
  s4, p4, l4 = _run(tiny_config, str(tmp_path / "d4"), 4)
  np.testing.assert_allclose(l1, l4, rtol=1e-5)
  for a, b in zip(jax.tree_util.tree_leaves(p1), jax.tree_util.tree_leaves(p4), strict=True):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
  assert s1["accuracy"] == s4["accuracy"]


@needs_4
def test_quantized_training_on_four_devices_matches_one(tiny_config, tmp_path):
  # Rounding amplifies the last-bit differences of a sharded reduction: once a code flips, the
  # runs drift apart chaotically (after 6 steps, 1 to 306 of the 61,950 parameters were off by
  # the measure below over seeds 0-2, both with and without the quantizers' parameters updated
  # as one vector). Before that they agree: the first loss exactly, the first checkpoint (step 2)
  # all but 0.1 % of parameters; after it the loss curve and 99 % of parameters still do.
  _, p1, l1 = _run(tiny_config, str(tmp_path / "d1"), 1)
  _, p4, l4 = _run(tiny_config, str(tmp_path / "d4"), 4)
  np.testing.assert_allclose(l1[0], l4[0], rtol=1e-6)
  np.testing.assert_allclose(l1, l4, rtol=2e-2)

  def off(p, q):
    a = np.concatenate([np.ravel(x) for x in jax.tree_util.tree_leaves(p)])
    b = np.concatenate([np.ravel(x) for x in jax.tree_util.tree_leaves(q)])
    return np.abs(a - b) > 2e-3 + 0.05 * np.abs(b)

  first = off(*(checkpoint.restore_variables(str(tmp_path / d), 2)[0] for d in ("d1", "d4")))
  assert first.mean() < 1e-3, f"step 2: {first.sum()} of {first.size} parameters differ"
  last = off(p1, p4)
  assert last.mean() < 1e-2, f"step 6: {last.sum()} of {last.size} parameters differ"


def test_batch_must_divide_over_devices(tiny_config, tmp_path):
  tiny_config.num_devices = 4 if jax.device_count() >= 4 else jax.device_count()
  tiny_config.batch_size = 30 if tiny_config.num_devices == 4 else 0
  with pytest.raises(ValueError, match=r"batch_size=30 must be divisible by the number of "
                                       r"devices \(4\)|batch_size=0"):
    train_and_evaluate(tiny_config, str(tmp_path / "x"))


_DEVICES = ("from quantjax.train import sharding; set_now = sharding.cpu_device_per_core(); "
            "import jax; print(set_now, jax.local_device_count(), sharding.cpu_device_per_core())")


@pytest.mark.parametrize("xla_flags, expected", [
    ("", f"True {len(os.sched_getaffinity(0))} False"),  # one per core; then JAX has started
    ("--xla_force_host_platform_device_count=3", "False 3 False"),  # the user's count stays
])
def test_cpu_device_per_core(xla_flags, expected):
  env = {k: v for k, v in os.environ.items() if k != "JAX_PLATFORMS"}
  env.update(XLA_FLAGS=xla_flags, JAX_PLATFORMS="cpu")
  out = subprocess.run([sys.executable, "-c", _DEVICES], env=env, capture_output=True, text=True,
                       timeout=120, check=True)
  assert out.stdout.split("\n")[-2] == expected


_CHOICE = ("import sys; from quantjax.train import sharding; "
           "print(sharding.cpu_devices_for_training(sys.argv[1], float(sys.argv[2]))); "
           "import jax; print(jax.local_device_count())")


@pytest.mark.parametrize("setting, step_macs, per_core", [
    ("auto", 128 * 416_520, False),  # LeNet-5's forward pass at batch 128: 0.05 G
    ("auto", 1e9, True),  # at the limit (ResNet-20's at 28x28 is 4.0 G)
    ("one", 1e12, False),
    ("per_core", 1.0, True),
])
def test_cpu_devices_for_training(setting, step_macs, per_core):
  env = {k: v for k, v in os.environ.items() if k not in ("JAX_PLATFORMS", "XLA_FLAGS")}
  env.update(JAX_PLATFORMS="cpu")
  out = subprocess.run([sys.executable, "-c", _CHOICE, setting, repr(step_macs)], env=env,
                       capture_output=True, text=True, timeout=120, check=True)
  cores = len(os.sched_getaffinity(0))
  assert out.stdout.split("\n")[-3:-1] == [str(per_core), str(cores if per_core else 1)]


def test_cpu_devices_setting_must_be_known():
  with pytest.raises(ValueError, match=r"^cpu_devices='two' is not valid; choose one of auto, "
                                       r"one, per_core$"):
    sharding.cpu_devices_for_training("two", 1e12)


# Building an experiment (dataset, model, layers, plan) must start no JAX backend, or training
# could not choose its CPU devices after it; checked for every method's config.
_BUILD = ("import importlib, sys; from jax._src import xla_bridge; "
          "from quantjax.train import experiment\n"
          "for name in sys.argv[2:]:\n"
          "  config = importlib.import_module('configs.' + name).get_config()\n"
          "  config.data_dir = sys.argv[1]\n"
          "  exp = experiment.build(config, training=False)\n"
          "  print(name, xla_bridge.backends_are_initialized(), exp.step_macs(128))")


def test_building_an_experiment_starts_no_backend(tmp_path):
  names = ["default", "float", "esb", "nuuq", "liss", "pot", "log", "pact", "ptq_fixedpoint"]
  root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  out = subprocess.run([sys.executable, "-c", _BUILD, str(tmp_path), *names], env=env, cwd=root,
                       capture_output=True, text=True, timeout=300, check=True)
  # LeNet-5's multiply-adds per image: conv1 5*5*1*6 * 28*28 + conv2 5*5*6*16 * 10*10
  # + fc1 400*120 + fc2 120*84 + fc3 84*10 = 117,600 + 240,000 + 48,000 + 10,080 + 840.
  assert out.stdout.split("\n")[-len(names) - 1:-1] == [
      f"{name} False {128 * 416_520}" for name in names]


_CHOOSE = ("import sys; from configs import default; from quantjax.train import experiment\n"
           "config = default.get_config(); config.data_dir = sys.argv[1]\n"
           "config.model = sys.argv[2]\n"
           "print(experiment.choose_cpu_devices(config))\n"
           "import jax; print(jax.local_device_count())")


@pytest.mark.parametrize("model, per_core", [("lenet5", False), ("resnet20", True)])
def test_training_chooses_cpu_devices_by_its_step(tmp_path, model, per_core):
  root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  out = subprocess.run([sys.executable, "-c", _CHOOSE, str(tmp_path), model], env=env, cwd=root,
                       capture_output=True, text=True, timeout=300, check=True)
  cores = len(os.sched_getaffinity(0))
  assert out.stdout.split("\n")[-3:-1] == [str(per_core), str(cores if per_core else 1)]
