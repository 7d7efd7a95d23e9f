"""train_and_evaluate on a real tfds name (cifar10) through tfds.testing.mock_data."""

import tensorflow_datasets as tfds

from quantjax.train import train_and_evaluate


def test_cifar10_smoke_with_mock_data(tiny_config, tmp_path):
  tiny_config.dataset = "cifar10"
  tiny_config.data_dir = str(tmp_path / "tfds")
  tiny_config.model = "resnet20"
  tiny_config.augment = "crop_flip"
  tiny_config.batch_size = 8
  tiny_config.eval_batch_size = 8
  tiny_config.num_epochs = 2 * 8 / 54  # 2 steps: the mock's 60 train examples minus 10 % hold-out
  with tfds.testing.mock_data(num_examples=60):
    summary = train_and_evaluate(tiny_config, str(tmp_path / "run"))
  assert summary["step"] == 2
  assert summary["num_examples"] == {"validation": 6, "test": 60}
  rows = {r["layer"]: r for r in summary["layers"]}
  assert rows["stem_conv"]["weight_bits"] == 8 and rows["head"]["weight_bits"] == 8
  assert rows["stage2_block0/shortcut_conv"]["weight_bits"] == 4
