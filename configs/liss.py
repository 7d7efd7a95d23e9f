"""Liss et al. W4A4 fine-tuned from float: 16 non-uniform levels on one integer scale per tensor.

  python train.py --config=configs/float.py --workdir=runs/float
  python train.py --config=configs/liss.py --workdir=runs/liss_w4a4 --config.init_from=runs/float

`init_from` is required (a float run's workdir). conv2, fc1 and fc2: weights and inputs take 2^4
k-quantile levels of a fitted Gaussian (half-normal for the unsigned inputs, which keep the level
0), each an 8-bit integer multiple of one per-tensor scale. conv1 and fc3 keep the baseline's 8-bit
uniform weights. W3A3: `--config.quant.weight.bits=3 --config.quant.act.bits=3`.

Should reach: within 1 point of the float run of the same seed (METHODS.md §3, issue 3).
Measured: results/accuracy.md (`python bench/accuracy_table.py`).
"""

import ml_collections

from configs import default, uniform_w4a4
from quantjax.intercept.spec import quantizer_spec


def get_config() -> ml_collections.ConfigDict:
  config = uniform_w4a4.fine_tuning(default.get_config())
  # Weights: signed Gaussian k-quantiles, re-fitted from the weights on every step.
  config.quant.weight = quantizer_spec("liss", bits=4, int_bits=8, fit="gaussian")
  # Inputs: unsigned (post-ReLU) half-normal fit tracked with a moving average.
  config.quant.act = quantizer_spec("liss", bits=4, int_bits=8, fit="gaussian")
  return config
