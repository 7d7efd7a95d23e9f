"""ONNX Runtime on an exported 8-bit model against the emulator."""

import numpy as np
import pytest

from quantjax.export import export_run
from quantjax.export.onnx import to_onnx
from quantjax.intsim import Emulator

ort = pytest.importorskip("onnxruntime")


def test_onnxruntime_bit_exact_with_24_bit_multipliers(quantized_run):
  exp, variables, images, _ = quantized_run("lenet5", "uniform8")
  graph = export_run(exp, variables, mult_bits=24)
  model = to_onnx(graph)
  ops = {n.op_type for n in model.graph.node}
  assert {"ConvInteger", "MatMulInteger"} <= ops
  session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
  got = session.run(None, {"image": images})[0]
  want, _ = Emulator(graph)(images)
  np.testing.assert_array_equal(got, want)


def test_onnx_rejects_non_uniform(quantized_run):
  exp, variables, _, _ = quantized_run("lenet5", "esb")
  with pytest.raises(ValueError, match="dyadic"):
    to_onnx(export_run(exp, variables))
