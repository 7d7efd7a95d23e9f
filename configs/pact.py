"""PACT W4A4 fine-tuned from float: learned activation clips (Choi et al. 2018).

  python train.py --config=configs/float.py --workdir=runs/float
  python train.py --config=configs/pact.py --workdir=runs/pact_w4a4 --config.init_from=runs/float

`init_from` is required (a float run's workdir). PACT quantizes activations only: the inputs of
conv2, fc1, fc2 and fc3 are clipped at a learned α and quantized to 4 unsigned bits; the weights
are the uniform baseline's (4-bit per-channel LSQ; conv1 and fc3 8-bit, conv1's input float).
Other widths: `--config.quant.weight.bits=3 --config.quant.act.bits=3`.

Should reach: about the uniform W4A4 baseline (configs/uniform_w4a4.py), within 0.5 points of
float; the measured figure is in results/accuracy.md (`python bench/accuracy_table.py`).
"""

import ml_collections

from configs import default, uniform_w4a4
from quantjax.intercept.spec import quantizer_spec


def get_config() -> ml_collections.ConfigDict:
  config = uniform_w4a4.fine_tuning(default.get_config())
  config.quant.weight = quantizer_spec("uniform", bits=4, granularity="channel", scale_method="lsq")
  # α starts at the 99.9th percentile of the first batch's inputs of each layer.
  config.quant.act = quantizer_spec("pact", bits=4)
  return config
