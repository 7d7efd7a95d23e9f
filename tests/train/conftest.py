"""Shared tiny-run configs for the training tests."""

import pytest

from configs import test as test_config


@pytest.fixture
def tiny_config(data_dir):
  """A few steps of W4A4 LeNet-5 on mnist5k, no TensorBoard."""
  config = test_config.get_config()
  config.data_dir = data_dir
  config.batch_size = 32
  config.eval_batch_size = 200
  config.num_epochs = 6 * 32 / 3500  # 6 steps
  config.checkpoint_every_steps = 2
  config.log_every_steps = 1
  config.tensorboard = False
  # One device: the suite fakes 4 CPU devices, and XLA's CPU collectives across fake devices can
  # starve on a loaded 2-core machine (a rendezvous abort); only test_sharding.py uses 4.
  config.num_devices = 1
  return config
