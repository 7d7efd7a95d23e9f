"""Per-layer table and model size, on hand-computed numbers."""

import jax.numpy as jnp
import numpy as np

from quantjax.intercept import LayerInfo, Rule, resolve
from quantjax.quantizers import nuuq
from quantjax.reports import layer_table, model_size_bits

LAYERS = [
    LayerInfo("conv", "conv", (3, 3, 1, 4), (1, 8, 8, 1), (1, 8, 8, 4), True),  # 36 w + 4 b
    LayerInfo("fc", "dense", (256, 10), (1, 256), (1, 10), True),  # 2560 w + 10 b
]


def test_sizes_hand_computed():
  plan = resolve(LAYERS, weight={"name": "uniform", "bits": 4}, act=None,
                 first_layer={"weight": None})
  rows = layer_table(LAYERS, plan)
  assert [r["weight_bits"] for r in rows] == [32, 4]
  size = model_size_bits(rows)
  assert size["model_size_bits"] == 36 * 32 + 2560 * 4 + (4 + 10) * 32
  assert size["float_size_bits"] == (36 + 4 + 2560 + 10) * 32
  assert size["weight_size_packed_bits"] == 36 * 32 + 2560 * 4


def test_nuuq_storage_figures_from_trained_state():
  q = nuuq.NUUQ(num_levels=3, container_bits=8)
  w = jnp.asarray(np.tile([-1.0, 0.0, 0.0, 1.0], 640).reshape(256, 10))  # indices 1/4, 1/2, 1/4
  params, state = q.init(w, "weight")
  variables = {"params": {"fc": {"kernel": w}},
               "quant_state": {"fc": {f"kernel_{k}": v for k, v in state.items()}}}
  plan = resolve(LAYERS, weight={"name": "nuuq", "num_levels": 3}, act=None, pattern="fc")
  row = layer_table(LAYERS, plan, variables)[1]
  storage = row["weight_storage"]
  np.testing.assert_allclose(storage["equivalent_bits"], np.log2(3), rtol=1e-6)
  assert storage["packed_bits"] == 2 and storage["multiplier_bits"] == 8
  np.testing.assert_allclose(storage["entropy_bits"], 1.5, rtol=1e-5)  # H(1/4, 1/2, 1/4)
  size = model_size_bits(layer_table(LAYERS, plan, variables))
  # The 3-entry table of 8-bit codes is stored too.
  np.testing.assert_allclose(size["weight_size_entropy_bits"], 36 * 32 + 2560 * 1.5 + 3 * 8,
                             rtol=1e-6)
  assert row["weight_table_bits"] == 3 * 8
  assert row["weight_size_bits"] == 2560 * np.log2(3) + 3 * 8
  assert row["weight_multiplier"] == {"kind": "integer", "operand_bits": 8, "shift_bits": 0}


def test_post_training_bias_and_output_quantizers_are_listed():
  fxp = {"name": "fixed_point", "bits": 6, "fractional_bits": 3}
  plan = resolve(LAYERS, weight=fxp, act=None, rules=[
      Rule("conv", bias={**fxp, "bits": 8}, output={**fxp, "bits": 5})])
  rows = {r["layer"]: r for r in layer_table(LAYERS, plan)}
  assert rows["conv"]["output_bits"] == 5 and rows["fc"]["output_bits"] == 32
  assert rows["conv"]["bias_quantizer"].startswith("fixed_point")
  assert rows["fc"]["bias_quantizer"] == rows["fc"]["output_quantizer"] == "float"


def test_rows_show_what_the_multiplier_sees():
  plan = resolve(LAYERS, weight={"name": "esb", "bits": 4, "significant_bits": 2},
                 act={"name": "pot", "bits": 3, "signed": False}, first_layer={"act": None})
  conv, fc = layer_table(LAYERS, plan)
  assert conv["weight_multiplier"] == {"kind": "significand_shift", "operand_bits": 2,
                                       "shift_bits": 2}
  assert conv["act_multiplier"] == {"kind": "float", "operand_bits": 32, "shift_bits": 0}
  assert fc["act_multiplier"] == {"kind": "shift", "operand_bits": 3, "shift_bits": 3}
  assert conv["weight_table_bits"] == 0 and conv["weight_size_bits"] == 4 * 36
