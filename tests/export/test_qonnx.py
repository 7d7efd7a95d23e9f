"""QONNX export: qonnx's cleanup and executor against the emulator, bit for bit."""

import copy

import numpy as np
import pytest

from quantjax.export import export_run
from quantjax.intsim import Accelerator, Emulator
from tests.intsim.conftest import FAMILIES

pytest.importorskip("qonnx")
from quantjax.export import qonnx  # noqa: E402

# The QONNX op each family's middle layers must be written with.
_EXPECTED_OPS = {
    "fixed_point": {"Trunc"},  # power-of-two rescales
    "uniform_pow2": {"Trunc"},
    "esb": {"MultiThreshold"},
    "esb_midrise": {"MultiThreshold"},
    "liss": {"MultiThreshold"},
    "pot": {"MultiThreshold"},
}


def _check(graph, images, accel=None):
  """(cleaned model, its op types) after asserting the executor's logits equal the emulator's."""
  model = qonnx.cleanup(qonnx.to_qonnx(graph, batch_size=len(images), accel=accel))
  got = qonnx.execute(model, images)
  want, _ = Emulator(graph, accel or Accelerator())(images)
  np.testing.assert_array_equal(got, want)
  return model, {n.op_type for n in model.graph.node}


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_lenet5_every_family_bit_exact(quantized_run, family):
  exp, variables, images, _ = quantized_run("lenet5", family)
  graph = export_run(exp, variables)  # the default 31-bit multipliers
  model, ops = _check(graph, images[:8])
  assert "Quant" in ops and ops >= _EXPECTED_OPS.get(family, set())
  # The first conv's weights are 8-bit uniform codes (the fixture's first layer): an INT8 tensor.
  weight = next(n for n in model.graph.node if n.op_type == "Quant"
                and model.get_initializer(n.input[0]) is not None
                and model.get_initializer(n.input[0]).ndim == 4)
  assert model.get_tensor_datatype(weight.output[0]).name == "INT8"


@pytest.mark.parametrize("rounding", ["half_up", "floor"])
@pytest.mark.parametrize("family", ["esb", "fixed_point", "uniform_affine_act"])
def test_rounding_modes_bit_exact(quantized_run, family, rounding):
  exp, variables, images, _ = quantized_run("lenet5", family)
  _check(export_run(exp, variables), images[:8], Accelerator(rounding=rounding))


def test_narrow_accumulator_saturates_as_the_emulator(quantized_run):
  exp, variables, images, _ = quantized_run("lenet5", "uniform8")
  graph = export_run(exp, variables)
  accel = Accelerator(acc_bits=16)
  _, stats = Emulator(graph, accel)(images[:8])
  assert sum(s["overflows"] for s in stats.values()) > 0  # the saturation is exercised
  _check(graph, images[:8], accel)


def test_sequential_thresholds_through_pools_and_batch_norm(quantized_run):
  exp, variables, images, _ = quantized_run("sequential", "esb")
  _, ops = _check(export_run(exp, variables), images[:4])
  assert {"MultiThreshold", "Gather", "ReduceMax"} <= ops


def test_resnet20_residual_adds_bit_exact(quantized_run):
  exp, variables, images, _ = quantized_run("resnet20", "pot")  # the emulator tests' fixture
  graph = export_run(exp, variables)
  _, ops = _check(graph, images[:1])
  # PoT codes push some convs past float32's 2^24 (split into digits, hence Floor) and the
  # residual adds' products past 2^53 (the split multiplier).
  assert {"MultiThreshold", "ReduceSum", "Floor"} <= ops


def test_bipolar_weights(quantized_run):
  exp, variables, images, _ = quantized_run("lenet5", "uniform8")
  graph = copy.deepcopy(export_run(exp, variables))
  fc2 = graph.node("fc2")["out"]
  codes = graph.tensors[f"{fc2}.w.codes"]
  graph.tensors[f"{fc2}.w.codes"] = np.where(codes >= 0, 1, -1)
  _, ops = _check(graph, images[:8])
  assert "BipolarQuant" in ops


def test_refuses_a_wrapping_accumulator(quantized_run):
  exp, variables, _, _ = quantized_run("lenet5", "uniform8")
  with pytest.raises(ValueError, match="saturating"):
    qonnx.to_qonnx(export_run(exp, variables), accel=Accelerator(overflow="wrap"))


def test_int_type():
  assert qonnx.int_type(0, 255) == (8, False, False)
  assert qonnx.int_type(-127, 127) == (8, True, True)
  assert qonnx.int_type(-8, 7) == (4, True, False)
  with pytest.raises(ValueError, match="no QONNX integer type"):
    qonnx.int_type(-3, 12)
