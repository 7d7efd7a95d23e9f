"""ResNet-20 (BatchNorm) on Fashion-MNIST: the higher-capacity network, float or any method.

  python train.py --config=configs/fashion/resnet20.py --workdir=runs/fm_r20/float
  python train.py --config=configs/fashion/resnet20.py:uniform_w4a4 \
    --workdir=runs/fm_r20/uniform --config.init_from=runs/fm_r20/float
  python train.py --config=configs/fashion/resnet20.py:float,short --workdir=runs/fm_r20s/float

Why ResNet-20 and not VGG-small: at 28×28 it needs 31 M multiply-adds per image against
VGG-small's 116 M (64-128-256 channels), and it is the network most low-bit papers report. Even so,
a 2-core CPU (one device per core, as training takes for it) runs 2.5 steps/s on an Intel host and
1.2-1.4 on an AMD EPYC one, so the 40 float epochs (16,840 steps) take 2-3.5 hours per seed; on
one H200 GPU, 4 minutes. (With one device per core training keeps XLA's kernel gradient, which
beat the taps of `conv_kernel_grad` there: 1.08 against 0.92 steps/s on the AMD host beside
another job; results/cpu_devices_taps_epyc.md.)

Float: SGD with Nesterov momentum 0.9, peak 0.1, cosine to zero over 40 epochs, weight decay 5e-4
on kernels, random 2-pixel shifts and horizontal flips. Methods (the argument names a configs/
method config, as for configs/fashion/lenet5.py): their quantizers, fine-tuned 8 epochs at 0.01
from the float run; the first conv and the classifier keep 8-bit weights.

Schedules (the argument's optional second part): `full` (the default) as above; `short`, float 12
epochs and rows 3, for a 2-core CPU, where one seed's float run and four fine-tuned rows then take
about 1.2 hours (Intel) to 2.2 hours (AMD EPYC) instead of 4-7 (estimated from the step rates
above; no seed has run to the end yet). Every row of a table and its float baseline use the same
schedule.

Should reach: float >= 93.5 % test accuracy (3-seed mean; compact BN networks with augmentation
reach 93-94.7 % in Fashion-MNIST's benchmark). Measured: 94.75 ± 0.05 % over seeds 0-2
(results/fashion_resnet20.md, `python bench/accuracy_table.py --dataset=fashion_mnist_resnet20`).
"""

import ml_collections

from configs.fashion import lenet5

# schedule: (float epochs, fine-tuning epochs)
SCHEDULES = {"full": (40.0, 8.0), "short": (12.0, 3.0)}
FLOAT_EPOCHS, FINE_TUNE_EPOCHS = SCHEDULES["full"]


def get_config(arg: str = "float") -> ml_collections.ConfigDict:
  """`arg`: a configs/ name (or float_ft), optionally followed by `,full` or `,short`."""
  name, _, schedule = arg.partition(",")
  if schedule and schedule not in SCHEDULES:
    raise ValueError(f"configs/fashion/resnet20.py:{arg}: unknown schedule {schedule!r}; use "
                     f"one of {', '.join(SCHEDULES)}")
  float_epochs, fine_tune_epochs = SCHEDULES[schedule or "full"]
  config = lenet5.get_config(name)
  config.model = "resnet20"
  config.optimizer = "sgd"
  config.momentum = 0.9
  config.weight_decay = 5e-4
  if name == "float":
    config.num_epochs = float_epochs
    config.learning_rate = 0.1
    config.warmup_epochs = 2.0 * float_epochs / SCHEDULES["full"][0]
  else:
    config.num_epochs = fine_tune_epochs
    config.learning_rate = 0.01
  return config
