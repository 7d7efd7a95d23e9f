"""SQNR and MXQN's per-layer choices on tensors whose best scheme is known."""

import math

import numpy as np
import pytest

from quantjax import quantizers
from quantjax.intercept import LayerInfo
from quantjax.ptq import mxqn
from quantjax.ptq.sqnr import quantizer_sqnr, sqnr_db


def test_sqnr_by_hand():
  assert sqnr_db(np.array([1.0, 2.0]), np.array([1.0, 1.0])) == pytest.approx(
      10 * math.log10(5.0))
  assert sqnr_db(np.array([1.0, 2.0]), np.array([1.0, 2.0])) == float("inf")
  q = quantizers.from_dict({"name": "fixed_point", "bits": 3, "fractional_bits": -1})
  x = np.array([0.3, -7.0, 5.0, 100.0])  # -> [0, -6, 4, 6]
  expected = 10 * math.log10(np.sum(x**2) / np.sum((x - [0, -6, 4, 6]) ** 2))
  assert quantizer_sqnr(q, x, "weight") == pytest.approx(expected, rel=1e-5)


def test_heavy_tailed_activations_choose_log_and_uniform_ones_fixed():
  rng = np.random.default_rng(0)
  cfg = mxqn.MxqnConfig(weight_bits=8, act_bits=4)
  heavy = np.exp(rng.normal(0.0, 2.0, size=1024)).astype(np.float32)  # log-normal, post-ReLU-like
  cands = mxqn.act_candidates(heavy, 4, cfg)
  assert cands["log"][1] > cands["fixed"][1]
  assert mxqn.choose("l", cands, cfg)[0] == "log"
  flat = rng.uniform(0.0, 1.0, size=1024).astype(np.float32)
  cands = mxqn.act_candidates(flat, 4, cfg)
  assert cands["fixed"][1] > cands["log"][1]
  assert mxqn.choose("l", cands, cfg)[0] == "fixed"
  # A margin larger than log's lead, or a forced scheme, overrides the SQNR rule.
  heavy_cands = mxqn.act_candidates(heavy, 4, cfg)
  lead = heavy_cands["log"][1] - heavy_cands["fixed"][1]
  assert mxqn.choose("l", heavy_cands, mxqn.MxqnConfig(log_margin_db=lead + 1))[0] == "fixed"
  assert mxqn.choose("conv2", heavy_cands, mxqn.MxqnConfig(force="conv.*=fixed"))[1] == "forced"


def test_weight_fraction_maximises_sqnr():
  rng = np.random.default_rng(1)
  w = rng.normal(0, 0.1, size=(3, 3, 4, 8)).astype(np.float32)
  spec, best, tried = mxqn.best_weight(w, 4, frac_search=4)
  assert best == max(t["sqnr_db"] for t in tried)
  for t in tried:  # each candidate's SQNR, recomputed independently
    q = np.clip(np.round(w * 2.0 ** t["F"]), -7, 7) * 2.0 ** -t["F"]
    assert t["sqnr_db"] == pytest.approx(sqnr_db(w, q), abs=1e-3)
  assert spec["fractional_bits"] == max(tried, key=lambda t: t["sqnr_db"])["F"]


def test_run_lowers_activation_bits_while_sqnr_holds():
  rng = np.random.default_rng(2)
  layers = [LayerInfo("a", "dense", (4, 4), (1, 4), (1, 4), True),
            LayerInfo("b", "dense", (4, 2), (1, 4), (1, 2), True)]
  kernels = {"a": rng.normal(size=(4, 4)), "b": rng.normal(size=(4, 2))}
  inputs = {"a": rng.normal(size=(64, 4)), "b": np.abs(rng.normal(size=(64, 4)))}
  cfg = mxqn.MxqnConfig(weight_bits=6, act_bits=5, min_act_bits=3, act_sqnr_db=15.0,
                        frac_search=2)
  rules, rows = mxqn.run(layers, kernels, inputs, cfg)
  assert rules[0]["act"] is None and rows[0]["act_scheme"] == "float"
  b = rows[1]
  chosen = b["act_candidates"][b["act_bits"]][b["act_scheme"]]
  assert chosen >= 15.0 and b["act_bits"] < 5
  if b["act_bits"] > 3:  # stopped because one bit fewer falls below the floor
    below = b["act_candidates"][b["act_bits"] - 1]
    assert max(below.values()) < 15.0 or below[b["act_scheme"]] < 15.0
  assert rules[1]["act"]["bits"] == b["act_bits"] and rules[1]["weight"]["bits"] == 6
  assert "SQNR" in mxqn.markdown(rows)


@pytest.mark.parametrize("field,value", [("act_bits", 9), ("force", "conv=int"),
                                         ("min_act_bits", 9), ("base_root", 3)])
def test_bad_settings(field, value):
  with pytest.raises(ValueError, match=field.split("_")[0]):
    mxqn.MxqnConfig(**{field: value})
