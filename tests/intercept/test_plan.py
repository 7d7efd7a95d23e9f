"""Resolving per-layer rules into a plan: first/last exceptions, overrides and errors."""

import pytest

from quantjax import intercept
from quantjax.intercept import LayerInfo

LAYERS = [
    LayerInfo("conv1", "conv", (5, 5, 1, 6), (1, 28, 28, 1), (1, 28, 28, 6), True),
    LayerInfo("conv2", "conv", (5, 5, 6, 16), (1, 14, 14, 6), (1, 10, 10, 16), True),
    LayerInfo("fc1", "dense", (400, 120), (1, 400), (1, 120), True),
    LayerInfo("fc2", "dense", (120, 10), (1, 120), (1, 10), True),
]
W4 = {"name": "uniform", "bits": 4}
A4 = {"name": "uniform", "bits": 4, "signed": False}


def bits(plan):
  return {p: (lq.weight.bits if lq.weight else None, lq.act.bits if lq.act else None)
          for p, lq in plan.layers}


def test_first_and_last_layer_exceptions():
  plan = intercept.resolve(LAYERS, weight=W4, act=A4, first_layer={"weight": {"bits": 8},
                                                                   "act": None},
                           last_layer={"weight": {"bits": 8}})
  assert bits(plan) == {"conv1": (8, None), "conv2": (4, 4), "fc1": (4, 4), "fc2": (8, 4)}


def test_pattern_and_rules_in_order():
  rules = [intercept.Rule("fc.*", weight={"bits": 6}), intercept.Rule("fc2", weight=None)]
  plan = intercept.resolve(LAYERS, weight=W4, act=A4, pattern="conv2|fc.*", rules=rules)
  assert bits(plan) == {"conv2": (4, 4), "fc1": (6, 4), "fc2": (None, 4)}


def test_rule_can_switch_quantizer_without_inheriting_fields():
  rules = [intercept.Rule("conv2", weight={"name": "uniform", "bits": 3, "scale_method": "pow2"})]
  plan = intercept.resolve(LAYERS, weight={"name": "uniform", "bits": 4, "granularity": "channel"},
                           act=None, rules=rules)
  assert plan.get("conv2").weight.granularity == "tensor"
  assert plan.get("conv1").weight.granularity == "channel"


def test_regex_matching_no_layer_lists_the_layers():
  with pytest.raises(ValueError, match=r"regex 'conv9' matches no layer; layers are: conv1, "
                                       r"conv2, fc1, fc2"):
    intercept.resolve(LAYERS, weight=W4, act=A4, rules=[intercept.Rule("conv9", weight=W4)])
  with pytest.raises(ValueError, match="quant.layers regex 'dense.*' matches no layer"):
    intercept.resolve(LAYERS, weight=W4, act=A4, pattern="dense.*")


def test_bad_bits_name_the_layer():
  with pytest.raises(ValueError, match=r"layer 'fc2' weight quantizer: Uniform.bits=20 is out of "
                                       r"range; valid: integers 2 to 16"):
    intercept.resolve(LAYERS, weight=W4, act=A4, last_layer={"weight": {"bits": 20}})


def test_per_channel_activation_is_rejected():
  with pytest.raises(ValueError, match="weights only"):
    intercept.resolve(LAYERS, weight=W4, act={"name": "uniform", "granularity": "channel"})


def test_plan_is_hashable_for_jit():
  plan = intercept.resolve(LAYERS, weight=W4, act=A4)
  assert hash(plan) == hash(intercept.resolve(LAYERS, weight=W4, act=A4))


def test_check_quant_config_fails_fast_without_a_model():
  from quantjax.intercept.plan import check_quant_config

  with pytest.raises(ValueError, match="unknown quantizer 'esbb'"):
    check_quant_config({"weight": {"name": "esbb"}, "act": None})
  with pytest.raises(ValueError, match=r"quant.first_layer.weight: .*bits=1 is out of range"):
    check_quant_config({"weight": W4, "act": A4, "first_layer": {"weight": {"bits": 1}}})
