"""ESB W4A4 (k = 2 significant bits) with DDA, fine-tuned from float (Gong et al. 2022).

  python train.py --config=configs/float.py --workdir=runs/float
  python train.py --config=configs/esb.py --workdir=runs/esb_w4k2 --config.init_from=runs/float
  python train.py --config=configs/esb.py --workdir=runs/esb_w3k1 --config.init_from=runs/float \
    --config.quant.weight.bits=3 --config.quant.act.bits=3 \
    --config.quant.weight.significant_bits=1 --config.quant.act.significant_bits=1

`init_from` is required (a float run's workdir). conv2, fc1 and fc2: 4-bit ESB weights with 2
significant bits ({0, ±0.5, ±1, ±1.5, ±2, ±3, ±4, ±6}·α), α per output channel, initialised at
λ(4, 2)·std and learned, with DDA's distribution-difference loss (MSE / var, weighted by
`dda.weight`); inputs 4-bit unsigned ESB with α = λ·σ̂ from a moving average. conv1 and fc3 keep
the baseline's 8-bit uniform weights.

Should reach (METHODS.md §5, issue 3): at least uniform (configs/uniform_w4a4.py) and PoT
(configs/pot.py) at W4A4 and W3A3, with k chosen on the validation split. Measured:
results/accuracy.md (`python bench/accuracy_table.py`, which sweeps b = 3, 4, 5 and every k).
"""

import ml_collections

from configs import default, uniform_w4a4
from quantjax.intercept.spec import quantizer_spec


def get_config() -> ml_collections.ConfigDict:
  config = uniform_w4a4.fine_tuning(default.get_config())
  config.quant.weight = quantizer_spec(
      "esb",
      bits=4,  # b, sign included
      significant_bits=2,  # k: 1 = power of two, b-1 = uniform
      granularity="channel",  # one α per output channel
      alpha="learned",  # DDA form (b): α learned, initialised at λ(b, k)·std
      dda_loss="mse",  # the auxiliary loss D(x, α·Q(x/α)), normalised by var(x)
  )
  config.quant.act = quantizer_spec(
      "esb", bits=4, significant_bits=2, signed=False, alpha="lambda_std")
  # Weight of the summed DDA losses in the training loss (read by the train step). Each layer's
  # loss is its relative quantization error; 1.0 is a choice, not tuned.
  config.dda = ml_collections.ConfigDict(dict(weight=1.0))
  return config
