"""Goyal et al.'s layer-wise fixed-point post-training search (METHODS.md §4) on a float run.

  python train.py --config=configs/ptq_fixedpoint.py --config.init_from=runs/float \
    --workdir=runs/fxp
  python train.py --config=configs/ptq_fixedpoint.py --config.model=sequential \
    --config.init_from=runs/float_sequential --workdir=runs/fxp_sequential

No training: the weights, biases and post-ReLU activations of every Conv/Dense layer get their own
Qm.n format, searched on the validation split (budget T = 0.5 %). Measured on mnist5k
(results/ptq.md): LeNet-5 loses 0.9 % of its test accuracy (relative) at 60 % less memory and
73 % less multiplication cost than all-8-bit; the Sequential net reaches 58 % / 79 % but loses
2.5 % on test (0.2 % on validation); with `--config.ptq.criterion=agreement` it loses 0.8 % at
45 % / 65 %. (Those figures predate the authors' extra diagonal step and 1-bit floor, now the
default; `--config.ptq.extra_diagonal_step=False --config.ptq.min_bits=2` selects the earlier
search.)
"""

import ml_collections

from configs import default


def get_config():
  config = default.get_config()
  config.mode = "ptq"  # post-training: quantjax.ptq.run instead of gradient training
  config.init_from = ""  # the float run to quantize (required)
  config.quant.enabled = False  # the input network is float; the search writes the result's quant
  config.ptq = ml_collections.ConfigDict()
  config.ptq.method = "fixedpoint"  # 'fixedpoint' (Goyal et al.) | 'mxqn'
  config.ptq.calibration_batches = 4  # validation batches whose outputs set the starting F
  config.ptq.calibration_batch_size = 125  # images per calibration batch
  # 'accuracy' (the paper's): validation accuracy; 'agreement': the fraction of validation
  # predictions equal to the float network's (every changed prediction counts as a loss).
  config.ptq.criterion = "accuracy"
  config.ptq.threshold = 0.005  # T: relative accuracy drop the budget schedule builds on
  config.ptq.tradeoff = 0.0015  # relative gain that pays for a wider neighbourhood point
  config.ptq.start_bits = ml_collections.ConfigDict(
      dict(weight=12, bias=8, output=12))  # start widths (+4 and retry if already over budget)
  # The authors' published search: one more diagonal step past the first failing (b, F), and
  # widths down to 1 bit (a 1-bit symmetric code is only 0: the tensor is dropped). This
  # project's earlier reading: --config.ptq.extra_diagonal_step=False --config.ptq.min_bits=2.
  config.ptq.extra_diagonal_step = True
  config.ptq.min_bits = 1  # lowest width a tensor may take (1 to 16)
  # quantjax.ptq.suffix: count each candidate from the layer searched on (its upstream result
  # cached), stop counting it once it cannot pass, and skip a point that quantizes its tensor as
  # one already counted did; the choices are those of a full evaluation per candidate (False:
  # the plain, much slower search; bench/ptq_search_time.py times each speed-up).
  config.ptq.fast_search = True
  return config
