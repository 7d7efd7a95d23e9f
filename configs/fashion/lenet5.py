"""LeNet-5 on Fashion-MNIST: the float baseline and every method, by the config's argument.

  python train.py --config=configs/fashion/lenet5.py --workdir=runs/fm/float       # float, 30 ep
  python train.py --config=configs/fashion/lenet5.py:float_ft --workdir=runs/fm/float_ft \
    --config.init_from=runs/fm/float                                 # float, 5 more epochs
  python train.py --config=configs/fashion/lenet5.py:esb --workdir=runs/fm/esb \
    --config.init_from=runs/fm/float                                 # any method, 5 epochs

The argument names a config of configs/ (float, uniform_w4a4, pact, pot, log, esb, nuuq, liss,
ptq_fixedpoint, ptq_mxqn) or `float_ft`; that config's quantizers and layers are kept and the data
and schedule become Fashion-MNIST's (`fashion`). Data: `fashion_mnist`, built offline from the
original IDX files (Debian's `dataset-fashion-mnist`, or `--config.source_dir`): 54,000 train,
6,000 validation (stratified, seeded), 10,000 test; random 2-pixel shifts and horizontal flips.

Schedule: float from scratch for 30 epochs (Adam 3e-3, cosine); every fine-tuning row, and the
`float_ft` baseline that continues the float run in float, for 5 epochs at 1e-3 from the float
checkpoint, so a quantized row and its baseline have trained equally long.

Should reach: float >= 91.0 % test accuracy (3-seed mean). Measured: results/fashion.md
(`python bench/accuracy_table.py --dataset=fashion_mnist`).
"""

import importlib

import ml_collections

FLOAT_EPOCHS = 30.0
FINE_TUNE_EPOCHS = 5.0


def fashion(config: ml_collections.ConfigDict, *, fine_tune: bool) -> ml_collections.ConfigDict:
  """Fashion-MNIST data and schedule on any LeNet-5 config of configs/ (its quantizers kept)."""
  config.dataset = "fashion_mnist"
  config.augment = "shift_flip"
  config.model = "lenet5"
  config.eval_batch_size = 1000
  config.checkpoint_every_steps = 2000
  config.log_every_steps = 200
  if fine_tune:
    config.num_epochs = FINE_TUNE_EPOCHS
    config.learning_rate = 1e-3
    config.warmup_epochs = 0.25
    config.eval_every_epochs = 4.0
  else:
    config.num_epochs = FLOAT_EPOCHS
    config.learning_rate = 3e-3
    config.warmup_epochs = 1.0
    config.eval_every_epochs = 10.0
  return config


def get_config(arg: str = "float") -> ml_collections.ConfigDict:
  if arg == "float_ft":  # the float run continued in float: the fair baseline of every row
    from configs import uniform_w4a4

    config = uniform_w4a4.fine_tuning(importlib.import_module("configs.float").get_config())
    config.quant.enabled = False
    return fashion(config, fine_tune=True)
  try:
    config = importlib.import_module(f"configs.{arg}").get_config()
  except ModuleNotFoundError:
    raise ValueError(f"configs/fashion/lenet5.py:{arg}: no configs/{arg}.py; use float, "
                     "float_ft or a method config's name") from None
  return fashion(config, fine_tune=arg != "float")
