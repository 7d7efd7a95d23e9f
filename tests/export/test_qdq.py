"""QDQ ONNX export run by onnxruntime, against the emulator."""

import importlib.util

import numpy as np
import pytest

from quantjax.export import export_run
from quantjax.export.onnx import save_onnx
from quantjax.export.qdq import run, to_qdq
from quantjax.intsim import Emulator

ort = pytest.importorskip("onnxruntime")


def _compare(graph, images):
  """(top-1 agreement, |QDQ logits - emulator logits| in output steps, the model)."""
  model = to_qdq(graph)
  got = run(model, images) / graph.meta["output_scale"]
  want, _ = Emulator(graph)(images)
  return np.mean(np.argmax(got, -1) == np.argmax(want, -1)), np.abs(got - want), model


@pytest.mark.parametrize("model_name", ["lenet5", "sequential"])
def test_uint8_codes_agree_with_the_emulator(quantized_run, model_name):
  exp, variables, images, _ = quantized_run(model_name, "uniform8")
  agreement, diff, model = _compare(export_run(exp, variables), images)
  ops = {n.op_type for n in model.graph.node}
  assert {"QuantizeLinear", "DequantizeLinear", "Conv", "Gemm"} <= ops
  assert agreement == 1.0
  # Where every 8-bit code equals the emulator's, the logits differ only by the emulator's final
  # rounding to an integer (<= 1/2 step, plus float32's last place); a code that float32 puts on
  # the other side of a rounding boundary moves a row's logits by a fraction of their spread.
  assert np.mean(np.max(diff, -1) <= 0.5 + 1e-3) >= 0.9
  want_spread = np.ptp(Emulator(export_run(exp, variables))(images)[0], axis=-1)
  assert np.all(np.max(diff, -1) <= 0.01 * want_spread)


def test_narrower_codes_are_clipped(quantized_run):
  exp, variables, images, _ = quantized_run("lenet5", "uniform4")
  agreement, diff, model = _compare(export_run(exp, variables), images)
  assert "Clip" in {n.op_type for n in model.graph.node}  # 4-bit codes in int8 containers
  assert agreement == 1.0 and np.median(diff) <= 2.0


def test_refuses_non_uniform_levels(quantized_run):
  exp, variables, _, _ = quantized_run("lenet5", "esb")
  with pytest.raises(ValueError, match="no QDQ form"):
    to_qdq(export_run(exp, variables))


def test_save_onnx_writes_each_format(quantized_run, tmp_path):
  exp, variables, images, _ = quantized_run("lenet5", "uniform8")
  graph = export_run(exp, variables, mult_bits=24)
  want, _ = Emulator(graph)(images[:4])
  for fmt in ("onnx", "qdq"):
    path = str(tmp_path / f"{fmt}.onnx")
    save_onnx(graph, path, fmt)
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    got = session.run(None, {"image": images[:4]})[0]
    if fmt == "onnx":
      np.testing.assert_array_equal(got, want)
    else:
      assert np.max(np.abs(got / graph.meta["output_scale"] - want)) <= 0.5 + 1e-3
  if importlib.util.find_spec("qonnx") is not None:
    from qonnx.core.modelwrapper import ModelWrapper

    from quantjax.export.qonnx import execute

    save_onnx(graph, str(tmp_path / "qonnx.onnx"), "qonnx", batch_size=4)
    np.testing.assert_array_equal(execute(ModelWrapper(str(tmp_path / "qonnx.onnx")),
                                          images[:4]), want)
  with pytest.raises(ValueError, match="not valid"):
    save_onnx(graph, str(tmp_path / "x.onnx"), "tflite")
