"""The cost model on a two-layer network worked out by hand."""

import dataclasses
import pathlib

import pytest

from quantjax import cost, intercept, quantizers
from quantjax.intercept import LayerInfo, LayerQuant, QuantPlan
from quantjax.quantizers import Multiplier, Storage

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


# What is stored and what is multiplied differ. Each test below fails on a cost model that charges
# a quantizer's stored bits as its multiplier width (or has no multiplier kind).


def test_nuuq_stores_a_2_bit_index_and_table_but_multiplies_8_bit_codes():
  # NUUQ N=4 on an 8-bit grid: a 2-bit index per weight plus one 4-entry table of 8-bit codes per
  # layer; the multiplier sees the 8-bit code. Outputs at 4-bit fixed point.
  nuuq = {"name": "nuuq", "num_levels": 4, "container_bits": 8}
  plan = intercept.resolve(LAYERS, weight=nuuq, act=None,
                           rules=[intercept.Rule(".*", output=_fxp(4))])
  report = cost.cost_report(LAYERS, plan)
  conv, fc = report["layers"]
  assert conv["mult_cost"] == 8 * 18 * 4 * 4 == 2304  # not 2 * 18 * 4 * 4
  assert conv["bops"] == 18 * 4 * 8 * 32  # float image in
  assert conv["weight_memory_bits"] == 2 * 18 + 4 * 8 == 68
  assert conv["memory_bits"] == 68 + 32 * 2 + 4 * 8
  assert (conv["weight_bits"], conv["weight_table_bits"]) == (2, 4 * 8)
  assert (conv["weight_multiplier"], conv["weight_operand_bits"]) == ("integer", 8)
  assert conv["param_bytes"] == 5 + 4 + 8  # ceil(36/8) index + 4-byte table + 2 float biases
  assert fc["mult_cost"] == 8 * 24 * 4 and fc["bops"] == 24 * 8 * 4
  assert fc["weight_memory_bits"] == 2 * 24 + 32
  assert report["total"]["mult_cost"] == 2304 + 768
  assert report["reduction_vs_8bit"]["mult_cost"] == pytest.approx(1 - 3072 / 6144)


def test_liss_multiplies_its_m_bit_integers_as_weights_and_activations():
  # Liss b=4, M=8: a 4-bit index plus a 16-entry table of 8-bit integers per tensor, multiplied
  # as 8-bit integers. conv's output is fc's Liss input: its table is stored once, with conv.
  liss = {"name": "liss", "bits": 4, "int_bits": 8}
  plan = intercept.resolve(LAYERS, weight=liss, act=liss, first_layer={"act": None})
  conv, fc = cost.cost_report(LAYERS, plan)["layers"]
  assert conv["mult_cost"] == 8 * 18 * 8 * 4  # not 4 * 18 * 4 * 4
  assert conv["activation_memory_bits"] == 4 * 8 + 16 * 8
  assert conv["weight_memory_bits"] == 4 * 18 + 16 * 8
  assert (conv["weight_bits"], conv["weight_table_bits"]) == (4, 16 * 8)
  assert (conv["output_bits"], conv["output_table_bits"]) == (4, 16 * 8)
  assert conv["weight_operand_bits"] == conv["output_operand_bits"] == 8
  assert (fc["input_bits"], fc["input_operand_bits"]) == (4, 8)
  assert fc["bops"] == 24 * 8 * 8  # not 24 * 4 * 4
  assert fc["mult_cost"] == 8 * 24 * 32  # float logits


@pytest.mark.parametrize(("k", "shift_bits"), [(1, 3), (2, 2), (3, 0)])
def test_esb_is_charged_its_k_bit_significands(k, shift_bits):
  # ESB b=4: a 4-bit stored value, multiplied as a k-bit significand then shifted by the E-bit
  # exponent (E = b-1-(k-1); k = b-1 is mid-rise, no exponent).
  esb = {"name": "esb", "bits": 4, "significant_bits": k}
  plan = intercept.resolve(LAYERS, weight=esb, act=None,
                           rules=[intercept.Rule(".*", output=_fxp(8))])
  conv = cost.cost_report(LAYERS, plan)["layers"][0]
  assert conv["mult_cost"] == k * 18 * 8 * 4  # not 4 * 18 * 8 * 4
  assert conv["weight_bits"] == 4 and conv["weight_table_bits"] == 0
  assert (conv["weight_multiplier"], conv["weight_operand_bits"]) == ("significand_shift", k)
  assert conv["weight_memory_bits"] == 4 * 18
  q = quantizers.get("esb")(bits=4, significant_bits=k)
  assert q.multiplier == Multiplier("significand_shift", k, shift_bits=shift_bits)


def test_pot_and_log_weights_are_a_shift_charged_at_their_code_width():
  # PoT b=4 signed: a sign and a 3-bit exponent code drive a shifter; charged as 4 × b_a.
  plan = intercept.resolve(LAYERS, weight={"name": "pot", "bits": 4},
                           act={"name": "pot", "bits": 3, "signed": False},
                           first_layer={"act": None})
  conv, fc = cost.cost_report(LAYERS, plan)["layers"]
  assert (conv["weight_multiplier"], conv["weight_operand_bits"]) == ("shift", 4)
  assert (conv["output_multiplier"], conv["output_operand_bits"]) == ("shift", 3)
  assert conv["input_multiplier"] == "float"
  assert conv["mult_cost"] == 4 * 18 * 3 * 4
  assert (fc["input_multiplier"], fc["bops"]) == ("shift", 24 * 4 * 3)
  assert quantizers.get("pot")(bits=4).multiplier == Multiplier("shift", 4, shift_bits=3)
  assert quantizers.get("log")(bits=5, signed=False).multiplier == Multiplier("shift", 5, 5)


def test_plain_codes_store_and_multiply_their_bits():
  for spec in ({"name": "uniform", "bits": 5}, {"name": "fixed_point", "bits": 5},
               {"name": "pact", "bits": 5}):
    q = quantizers.from_dict(spec)
    assert q.storage == Storage(5.0) and q.multiplier == Multiplier("integer", 5)


@dataclasses.dataclass(frozen=True, kw_only=True)
class _ChannelTable(quantizers.Quantizer):
  """A user's quantizer, unregistered: a 3-bit index into a 6-bit table per output channel."""

  bits: int = 3

  @property
  def storage(self):
    return Storage(3.0, table_entries=8, table_bits=6, table_per_channel=True)

  @property
  def multiplier(self):
    return Multiplier("integer", 6)


def test_the_cost_model_reads_only_the_contract():
  plan = QuantPlan((("conv", LayerQuant(weight=_ChannelTable(), output=_ChannelTable())),))
  conv = cost.cost_report(LAYERS, plan)["layers"][0]
  assert conv["mult_cost"] == 6 * 18 * 6 * 4  # not 3 * 18 * 3 * 4
  assert conv["weight_memory_bits"] == 3 * 18 + 2 * 8 * 6  # one table per output channel
  assert conv["output_table_bits"] == 8 * 6
  source = "".join(p.read_text() for p in pathlib.Path(cost.__file__).parent.glob("*.py"))
  for name in quantizers.names():  # no branching on a registered quantizer's name
    assert f'"{name}"' not in source and f"'{name}'" not in source, name
  assert "._" not in source.replace("__", "")  # no private members read


def test_text_report_shows_multiplier_kinds_and_widths():
  from quantjax.cost.report import format_report

  plan = intercept.resolve(LAYERS, weight={"name": "nuuq", "num_levels": 4}, act=None,
                           rules=[intercept.Rule(".*", output={"name": "pot", "bits": 4})])
  lines = format_report(cost.cost_report(LAYERS, plan)).splitlines()
  assert "m_w" in lines[0] and "tables" in lines[0]
  conv = lines[1].split()
  assert conv[:7] == ["conv", "2", "32", "32", "4", "32", "int8"]
  assert conv[7:9] == ["fp32", "shift4"]
