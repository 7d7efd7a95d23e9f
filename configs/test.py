"""Tiny smoke-test config: two steps of W4A4 LeNet-5 on mnist5k (seconds).

  python train.py --config=configs/test.py --workdir=/tmp/quantjax_smoke
"""

from configs import default


def get_config():
  config = default.get_config()
  config.num_epochs = 0.04  # ~1 step of 128 images on mnist5k's 3,500 training digits
  config.batch_size = 64
  config.eval_batch_size = 256
  config.log_every_steps = 1
  config.checkpoint_every_steps = 1
  config.eval_every_epochs = 0.0
  config.warmup_epochs = 0.0
  return config
