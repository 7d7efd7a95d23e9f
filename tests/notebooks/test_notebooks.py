"""The notebooks run top to bottom in their fast mode, and the numbers they report are checked.

Each notebook ends by printing `notebook results: {json}`, the key numbers its conclusion is
computed from. The fast run (a few training steps) checks what holds however short the training:
level counts, integer emulation without overflow, SQNR ordering by bit width, accuracies above
chance. The committed outputs (a full run) are checked against what the project claims: float
and quantized accuracies, integer/fake-quant agreement of at least 99 %.
"""

import json
import os
import sys

import nbformat
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "notebooks"))

import run  # noqa: E402  notebooks/run.py: the runner that makes the committed outputs

NOTEBOOKS = sorted(f for f in os.listdir(os.path.join(ROOT, "notebooks")) if f.endswith(".ipynb"))
MARKER = "notebook results: "


def results_of(nb) -> dict:
  """The JSON the notebook's last cell prints after MARKER (exactly one such line)."""
  lines = [line for cell in nb.cells if cell.cell_type == "code"
           for out in cell.get("outputs", []) if out.get("output_type") == "stream"
           for line in out.get("text", "").splitlines() if line.startswith(MARKER)]
  assert len(lines) == 1, f"expected one {MARKER!r} line, found {len(lines)}"
  return json.loads(lines[0][len(MARKER):])


def outputs_of(nb, mime: str) -> list:
  return [out["data"][mime] for cell in nb.cells if cell.cell_type == "code"
          for out in cell.get("outputs", []) if mime in out.get("data", {})]


def check_extend_a_quantizer(r: dict, *, full: bool) -> None:
  assert r["apot_weight_levels_4bit"] == 15  # 8 magnitudes, ±, one zero
  assert r["fc1_levels"]["apot"] == 15
  assert r["fc1_levels"]["uniform"] == 15  # narrow-range symmetric 4-bit codes
  assert set(r["test_accuracy"]) == {"float", "apot", "uniform", "esb"}
  for name, acc in r["test_accuracy"].items():
    floor = (0.97 if name == "float" else 0.95) if full else 0.2  # chance is 0.1
    assert floor < acc <= 1.0, (name, acc)
  for name, db in r["fc1_sqnr_db"].items():
    assert (10.0 if full else 5.0) < db < 40.0, (name, db)
  # APoT's integer form: indices into ±{0, 1, 4, 8, 9, 12, 16, 24} (weights, scale α/24) and the
  # 16 unsigned sums of the 4-bit activation terms.
  apot_weights = {s * n for s in (-1, 1) for n in (0, 1, 4, 8, 9, 12, 16, 24)}
  assert set(r["apot_weight_table"]) <= apot_weights
  assert 24 in {abs(v) for v in r["apot_weight_table"]}  # α = max|w| is the largest level
  assert r["apot_act_table"] == [0, 1, 2, 3, 4, 6, 8, 9, 12, 16, 18, 24, 32, 33, 36, 48]
  # `eval.py --mode=int` on the APoT run, in its own process: the recorded import found 'apot'.
  i = r["apot_int"]
  assert i["num_examples"] == 1000 and i["overflows"] == 0
  assert i["apot_layers"] == ["conv2", "fc1", "fc2"]  # conv1 and fc3 are 8-bit uniform
  fake_quant = r["test_accuracy"]["apot"]
  assert abs(i["accuracy_fakequant"] - fake_quant) <= 0.002  # the same checkpoint, re-evaluated
  assert i["agreement"] >= (0.99 if full else 0.8)
  # The integer accuracy differs from the notebook's fake-quant one by at most the disagreements.
  assert abs(i["accuracy_int"] - fake_quant) <= 1 - i["agreement"] + 0.002
  assert (0.95 if full else 0.2) < i["accuracy_int"] <= 1.0


def check_inspect_a_model(r: dict, *, full: bool) -> None:
  assert r["num_examples"] == 1000
  assert r["overflows"] == 0  # 32-bit accumulators never saturate on LeNet-5
  assert r["narrow_accumulators"]["32"]["overflows"] == 0
  for acc in (r["accuracy_int"], r["accuracy_fakequant"]):
    assert (0.95 if full else 0.2) < acc <= 1.0
  assert r["agreement"] >= (0.99 if full else 0.8)
  # Accuracies can differ by at most the share of images on which the two disagree.
  assert abs(r["accuracy_int"] - r["accuracy_fakequant"]) <= 1 - r["agreement"] + 1e-9
  w = r["weight_sqnr_db"]
  assert set(w) == {"conv1", "conv2", "fc1", "fc2", "fc3"}
  assert min(w["conv1"], w["fc3"]) > max(w["conv2"], w["fc1"], w["fc2"]) + 3  # 8 bits vs 4
  assert all(8.0 < db < 45.0 for db in list(w.values()) + list(r["input_sqnr_db"].values()))
  assert 0.3 < r["reduction_vs_8bit"]["memory_bits"] < 0.7
  assert max(r["acc_bits_seen"].values()) <= 32


def check_bring_your_own_model(r: dict, *, full: bool) -> None:
  plan = r["plan"]
  convs = ("block_conv1", "down")
  assert plan["stem"] == {"weight": "uniform8/channel/lsq", "input": "float"}  # first layer
  assert plan["head"] == {"weight": "uniform8/channel/lsq", "input": "uniformu8/tensor/max"}
  assert plan["block_conv2"]["weight"] == "uniform3/channel/lsq"  # the rule
  for name in convs:
    assert plan[name] == {"weight": "uniform4/channel/lsq", "input": "uniformu4/tensor/max"}
  bns = ["block_conv1_bn", "block_conv2_bn", "down_bn", "stem_bn"]
  assert r["float_layers"] == bns and all(plan[b]["weight"] == "float" for b in bns)
  assert r["apply_fn_is_quantized"] is True
  # Training did something: the loss fell and the accuracy is far above chance (0.1).
  assert r["loss_last"] < (0.3 if full else 0.8) * r["loss_first"]
  for acc in (r["accuracy_fakequant"], r["accuracy_int"]):
    assert (0.95 if full else 0.4) < acc <= 1.0
  # The traced graph: every op of the model, the BatchNorms folded (no node of their own).
  assert r["graph_ops"] == {"add": 1, "conv": 4, "dense": 1, "input": 1, "maxpool": 1,
                            "relu": 4, "requant": 5, "sumpool": 1}
  assert r["float32_weight_bytes"] == 4 * (9 * 16 + 2 * 9 * 16 * 16 + 9 * 16 * 32 + 32 * 10)
  assert r["float32_weight_bytes"] / r["export_bytes"] > 4  # 3-8-bit codes, packed
  gelu = r["gelu_error"]  # one line naming the op and the layer it follows
  assert gelu.startswith("cannot lower op ") and "after layer 'stem_bn'" in gelu
  assert "\n" not in gelu
  # Emulator and the independent NumPy reference: every logit of every test image.
  assert r["num_test"] == 1000 and r["bit_exact"] == 1.0 and r["overflows"] == 0
  assert r["agreement"] >= (0.99 if full else 0.9)
  assert abs(r["accuracy_int"] - r["accuracy_fakequant"]) <= 1 - r["agreement"] + 1e-9
  # Integer logits × output_scale against fake-quant: a few flipped 4-bit codes, not a wrong scale.
  assert r["logit_error_of_spread"]["median"] < 0.05


CHECKS = {"bring_your_own_model.ipynb": check_bring_your_own_model,
          "extend_a_quantizer.ipynb": check_extend_a_quantizer,
          "inspect_a_model.ipynb": check_inspect_a_model}


def test_every_notebook_is_checked():
  assert {"bring_your_own_model.ipynb", "extend_a_quantizer.ipynb",
          "inspect_a_model.ipynb"} <= set(NOTEBOOKS)
  assert set(NOTEBOOKS) == set(CHECKS)


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_runs_and_its_numbers_hold(name, tmp_path, monkeypatch):
  monkeypatch.setenv("QUANTJAX_NOTEBOOK_FAST", "1")
  monkeypatch.setenv("QUANTJAX_NOTEBOOK_WORKDIR", str(tmp_path))
  nb = run.execute(os.path.join(ROOT, "notebooks", name), save=False)  # raises on a failing cell
  results = results_of(nb)
  assert results["fast"] is True
  CHECKS[name](results, full=False)
  with open(tmp_path / "notebook_results.json") as f:
    assert json.load(f) == results
  assert outputs_of(nb, "text/html"), "tables are rendered as HTML"
  assert outputs_of(nb, "image/png"), "the figures are drawn"
  conclusion = outputs_of(nb, "text/markdown")[-1]
  assert "Fast mode" in "".join(conclusion)


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_committed_outputs_are_a_full_run_whose_numbers_hold(name):
  nb = nbformat.read(os.path.join(ROOT, "notebooks", name), as_version=4)
  code = [c for c in nb.cells if c.cell_type == "code"]
  assert all(c.get("execution_count") for c in code), f"{name} has cells that never ran"
  text = "".join(o.get("text", "") for c in code for o in c.get("outputs", []))
  assert "fast=False" in text, f"{name}'s outputs are not from a full run"
  results = results_of(nb)
  assert results["fast"] is False
  CHECKS[name](results, full=True)
  assert len(outputs_of(nb, "image/png")) >= 1
  conclusion = "".join(outputs_of(nb, "text/markdown")[-1])
  assert "Fast mode" not in conclusion and "below the 99 %" not in conclusion
