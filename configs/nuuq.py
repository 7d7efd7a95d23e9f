"""NUUQ with 4 levels on an 8-bit grid, fine-tuned from float (Zacchigna et al. 2024).

  python train.py --config=configs/float.py --workdir=runs/float
  python train.py --config=configs/nuuq.py --workdir=runs/nuuq4 --config.init_from=runs/float
  python train.py --config=configs/nuuq.py --workdir=runs/nuuq3 --config.init_from=runs/float \
    --config.quant.weight.num_levels=3

`init_from` is required (a float run's workdir): the levels are k-means centres of trained weights.
conv2, fc1 and fc2 store each weight as an index into a 4-entry table of 8-bit integers (2
equivalent bits; 3 levels = 1.58), re-clustered every 50 steps until step 400 of the 540, then
frozen. NUUQ is a weight quantizer: the layers' inputs are 8-bit uniform, matching the 8-bit
multiplier the table implies. conv1 and fc3 keep the baseline's 8-bit uniform weights.

Should reach (METHODS.md §1, issue 3): 4 levels lose at most 0.1 points against the float run of
the same seed, 3 levels at most 0.6. Measured: results/accuracy.md
(`python bench/accuracy_table.py`).
"""

import ml_collections

from configs import default, uniform_w4a4
from quantjax.intercept.spec import quantizer_spec


def get_config() -> ml_collections.ConfigDict:
  config = uniform_w4a4.fine_tuning(default.get_config())
  config.quant.weight = quantizer_spec(
      "nuuq",
      num_levels=4,  # N levels per layer (equivalent bits log2 N)
      container_bits=8,  # b, the fixed-point grid the levels are snapped to (the multiplier)
      grid="pow2",  # grid step 2^-F
      recluster_every=50,  # steps between k-means re-fits
      freeze_at=400,  # no re-fit in the last quarter of the 20 epochs (27 steps each)
  )
  config.quant.act = quantizer_spec("uniform", bits=8, signed=False, scale_method="max")
  return config
