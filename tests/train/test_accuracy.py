"""Training must actually learn: accuracy floors on mnist5k after a short run."""

import pytest

from quantjax.train import train_and_evaluate


@pytest.mark.parametrize(("quantized", "floor"), [(False, 0.93), (True, 0.90)])
def test_lenet_learns_mnist5k(tiny_config, tmp_path, quantized, floor):
  tiny_config.quant.enabled = quantized
  tiny_config.batch_size = 128
  tiny_config.num_epochs = 4
  tiny_config.learning_rate = 3e-3
  tiny_config.warmup_epochs = 0.5
  tiny_config.checkpoint_every_steps = 1000
  tiny_config.log_every_steps = 50
  tiny_config.augment = "none"
  summary = train_and_evaluate(tiny_config, str(tmp_path / "run"))
  # Chance is 0.10; four epochs of 3,500 digits reach well above the floor.
  assert summary["accuracy"]["test"] >= floor, summary["accuracy"]
