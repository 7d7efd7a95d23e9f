"""MXQN (Huang et al. 2021, METHODS.md §2): fixed-point weights, per-layer fixed/log activations.

  python train.py --config=configs/ptq_mxqn.py --config.init_from=runs/float --workdir=runs/mxqn
  python train.py --config=configs/ptq_mxqn.py --config.init_from=runs/float --workdir=runs/mxqn6 \
    --config.ptq.weight_bits=6 --config.ptq.act_bits=5 --config.ptq.min_act_bits=4 \
    --config.ptq.act_sqnr_db=20

No training. Weights: fixed point at `weight_bits` with the SQNR-best F; each layer's input
activation: fixed point or logarithmic (base √2), whichever has the higher SQNR on calibration
data from the validation split. The default (W8, 8-bit mixed activations) stays within about half
a point of float on mnist5k; results/ptq.md has the measured figures. The per-layer table is
written to <workdir>/ptq_report.md and .json.
"""

import ml_collections

from configs import default


def get_config():
  config = default.get_config()
  config.mode = "ptq"  # post-training: quantjax.ptq.run instead of gradient training
  config.init_from = ""  # the float run to quantize (required)
  config.quant.enabled = False  # the input network is float; MXQN writes the result's quant
  config.ptq = ml_collections.ConfigDict()
  config.ptq.method = "mxqn"  # 'mxqn' | 'fixedpoint'
  config.ptq.calibration_batches = 4  # validation batches the SQNRs are measured on
  config.ptq.calibration_batch_size = 125  # images per calibration batch
  config.ptq.weight_bits = 8  # fixed-point weights, F by SQNR
  config.ptq.act_bits = 8  # activation bits (fixed or log per layer)
  config.ptq.min_weight_bits = 0  # > 0: lower weights to this while SQNR >= weight_sqnr_db
  config.ptq.min_act_bits = 0  # > 0: lower activations to this while SQNR >= act_sqnr_db
  config.ptq.weight_sqnr_db = 0.0  # SQNR floor for lowering weight bits
  config.ptq.act_sqnr_db = 0.0  # SQNR floor for lowering activation bits
  config.ptq.log_margin_db = 0.0  # log wins if SQNR_log >= SQNR_fixed + margin
  config.ptq.base_root = 2  # log base 2^(1/m): 1 = power of two, 2 = √2 (MXQN's default), 4
  config.ptq.frac_search = 4  # fixed-point F tried above the no-clipping one
  config.ptq.quantize_input = False  # also quantize the first layer's input (the image)
  config.ptq.force = ""  # forced activation schemes: 'regex=log,regex=fixed'
  return config
