"""Power-of-two W4A4 fine-tuned from float: levels {0} ∪ ±2^e (the baseline ESB must beat).

  python train.py --config=configs/float.py --workdir=runs/float
  python train.py --config=configs/pot.py --workdir=runs/pot_w4a4 --config.init_from=runs/float

`init_from` is required (a float run's workdir). conv2, fc1 and fc2: 4-bit PoT weights (a sign and
7 exponents below a full scale chosen per output channel for the best SQNR) and 4-bit unsigned PoT
inputs (15 exponents, full scale from a moving average). conv1 and fc3 keep the baseline's 8-bit
uniform weights. W3A3: `--config.quant.weight.bits=3 --config.quant.act.bits=3`.

Should reach: no target of its own; it is the PoT baseline of ESB's check (ESB >= PoT at W3A3 and
W4A4). Measured: results/accuracy.md (`python bench/accuracy_table.py`).
"""

import ml_collections

from configs import default, uniform_w4a4
from quantjax.intercept.spec import quantizer_spec


def get_config() -> ml_collections.ConfigDict:
  config = uniform_w4a4.fine_tuning(default.get_config())
  config.quant.weight = quantizer_spec("pot", bits=4, granularity="channel", full_scale="sqnr")
  config.quant.act = quantizer_spec("pot", bits=4, signed=False, full_scale="sqnr")
  return config
