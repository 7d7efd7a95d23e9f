"""Float baseline: the default model and schedule with no quantization.

  python train.py --config=configs/float.py --workdir=runs/float

Reaches about 98 % test accuracy on mnist5k; every quantized result is compared with it.
Also the checkpoint to fine-tune from: `--config.init_from=runs/float`.
"""

from configs import default


def get_config():
  config = default.get_config()
  config.quant.enabled = False  # float training: no quantizer is applied
  return config
