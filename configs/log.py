"""Logarithmic base-√2 W4A4 fine-tuned from float: MXQN's fine-grained log levels {0} ∪ ±2^(k/2).

  python train.py --config=configs/float.py --workdir=runs/float
  python train.py --config=configs/log.py --workdir=runs/log_w4a4 --config.init_from=runs/float

`init_from` is required (a float run's workdir). conv2, fc1 and fc2: 4-bit log weights (a sign
and 7 exponents in steps of √2 below a full scale chosen per output channel for the best SQNR)
and 4-bit unsigned log inputs (15 exponents). conv1 and fc3 keep the baseline's 8-bit uniform
weights. Here the quantizer is trained (QAT); MXQN itself is post-training, which is a separate
search. W3A3: `--config.quant.weight.bits=3 --config.quant.act.bits=3`; base 2^(1/4):
`--config.quant.weight.base_root=4 --config.quant.act.base_root=4`.

Should reach: no target of its own (a comparison row); measured: results/accuracy.md
(`python bench/accuracy_table.py`).
"""

import ml_collections

from configs import default, uniform_w4a4
from quantjax.intercept.spec import quantizer_spec


def get_config() -> ml_collections.ConfigDict:
  config = uniform_w4a4.fine_tuning(default.get_config())
  config.quant.weight = quantizer_spec(
      "log", bits=4, base_root=2, granularity="channel", full_scale="sqnr")
  config.quant.act = quantizer_spec("log", bits=4, base_root=2, signed=False, full_scale="sqnr")
  return config
