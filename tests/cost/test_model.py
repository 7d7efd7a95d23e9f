"""The cost model on a two-layer network worked out by hand."""

import pytest

from quantjax import cost, intercept
from quantjax.intercept import LayerInfo

# conv 3x3, 1 -> 2 channels, VALID on 4x4: output 2x2x2; then dense 8 -> 3.
LAYERS = [
    LayerInfo("conv", "conv", (3, 3, 1, 2), (1, 4, 4, 1), (1, 2, 2, 2), True),
    LayerInfo("fc", "dense", (8, 3), (1, 8), (1, 3), True),
]


def _fxp(bits):
  return {"name": "fixed_point", "bits": bits}


def test_goyal_plan_by_hand():
  plan = intercept.resolve(
      LAYERS, weight=None, act=None,
      rules=[intercept.Rule("conv", weight=_fxp(4), bias=_fxp(6), output=_fxp(5)),
             intercept.Rule("fc", weight=_fxp(3), bias=_fxp(8), output=_fxp(7))])
  report = cost.cost_report(LAYERS, plan)
  conv, fc = report["layers"]
  # conv: 18 weights, 2 biases, 8 outputs per image on a 2x2 map; input is the float image.
  assert (conv["input_bits"], conv["output_bits"]) == (32, 5)
  assert conv["memory_bits"] == 4 * 18 + 6 * 2 + 5 * 8 == 124
  assert conv["mult_cost"] == 4 * 18 * 5 * 4 == 1440
  assert conv["bops"] == 18 * 4 * 4 * 32 == 9216
  assert conv["param_bytes"] == 9 + 2  # ceil(72/8) + ceil(12/8)
  # fc: its input bits are conv's output bits.
  assert (fc["input_bits"], fc["output_bits"]) == (5, 7)
  assert fc["memory_bits"] == 3 * 24 + 8 * 3 + 7 * 3 == 117
  assert fc["mult_cost"] == 3 * 24 * 7 == 504
  assert fc["bops"] == 24 * 3 * 5 == 360
  assert fc["param_bytes"] == 9 + 3
  total, ref = report["total"], report["reference_8bit"]
  assert total["memory_bits"] == 241 and total["mult_cost"] == 1944 and total["param_bytes"] == 23
  assert total["activation_memory_bits"] == 40 + 21
  assert ref["memory_bits"] == 8 * (18 + 2 + 8) + 8 * (24 + 3 + 3) == 464
  assert ref["mult_cost"] == 8 * 18 * 8 * 4 + 8 * 24 * 8 == 6144
  assert ref["bops"] == 8 * 8 * (72 + 24)
  red = report["reduction_vs_8bit"]
  assert red["memory_bits"] == pytest.approx(1 - 241 / 464)
  assert red["mult_cost"] == pytest.approx(1 - 1944 / 6144)


def test_input_quantizers_set_the_previous_layer_output_bits():
  # A QAT-style plan (kernel + input quantizers): conv's output bits are fc's input bits.
  plan = intercept.resolve(LAYERS, weight={"name": "uniform", "bits": 4},
                           act={"name": "uniform", "bits": 3, "signed": False},
                           first_layer={"act": None})
  conv, fc = cost.cost_report(LAYERS, plan)["layers"]
  assert (conv["input_bits"], conv["output_bits"], conv["bias_bits"]) == (32, 3, 32)
  assert (fc["input_bits"], fc["output_bits"]) == (3, 32)
  assert conv["mult_cost"] == 4 * 18 * 3 * 4


def test_float_and_non_integer_bits_pack_up():
  report = cost.cost_report(LAYERS, None)
  assert report["total"]["param_bytes"] == 4 * (18 + 2 + 24 + 3)
  bits = [cost.LayerBits(weight=1.58, bias=8, input=8, output=8)] * 2
  conv = cost.cost_report(LAYERS, bits=bits)["layers"][0]
  assert conv["param_bytes"] == 5 + 2  # 18 ternary weights at 2 bits: 36 bits -> 5 bytes


def test_text_report_lists_every_layer_and_total():
  from quantjax.cost.report import format_report

  text = format_report(cost.cost_report(LAYERS, None))
  assert "conv" in text and "fc" in text and "reduction" in text
  assert "-300.0 %" in text  # float (32 bits) is 4x the all-8-bit memory
