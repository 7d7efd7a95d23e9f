"""Shared tiny-run configs for the training tests."""

import pytest

from configs import test as test_config


@pytest.fixture
def tiny_config(data_dir):
  """A few steps of W4A4 LeNet-5 on mnist5k, no TensorBoard."""
  return tiny_run_config(data_dir)


@pytest.fixture(scope="session")
def finished_run(data_dir, tmp_path_factory):
  """A finished tiny run (checkpoints 2, 4, 6 with manifests, summary.json), trained once.

  Returns `copy(name)`: a fresh copy of it under the test session's tmp dir, to damage at will.
  """
  import shutil

  from quantjax.train import train_and_evaluate

  config = tiny_run_config(data_dir)
  source = str(tmp_path_factory.mktemp("finished") / "run")
  train_and_evaluate(config, source)

  def copy(name: str) -> str:
    target = str(tmp_path_factory.mktemp(name) / "run")
    shutil.copytree(source, target)
    return target

  return copy


def tiny_run_config(data_dir):
  """Six steps of W4A4 LeNet-5 on mnist5k (checkpoints every 2), no TensorBoard."""
  config = test_config.get_config()
  config.data_dir = data_dir
  config.batch_size = 32
  config.eval_batch_size = 200
  config.num_epochs = 6 * 32 / 3500  # 6 steps
  config.checkpoint_every_steps = 2
  config.log_every_steps = 1
  config.tensorboard = False
  # One device, the fastest on 2 cores; test_sharding, test_reproducible and test_distributed
  # set more (the suite fakes 4 CPU devices).
  config.num_devices = 1
  return config
