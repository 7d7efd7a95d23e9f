"""QDQ ONNX of an integer graph: `QuantizeLinear` / `DequantizeLinear` around float `Conv` / `Gemm`.

The form ONNX Runtime and most deployment tools consume (and fuse into integer kernels): every
uniform 8-bit activation is a `QuantizeLinear` (uint8 or int8, its scale and zero point) then a
`DequantizeLinear`; weights are int8 initializers through a per-output-channel
`DequantizeLinear`, biases int32 at the accumulator's scale. Between them the graph is float32:
conv/dense, ReLU, max-pool, global average pool, residual add, and BatchNorm that follows a ReLU
(the Sequential net) as a per-channel `Mul`/`Add` before the next `QuantizeLinear`. BatchNorm after
a conv is already folded into the weights' scales. The first layer reads the normalised image on
the export's integer grid (`p·mul - offset`, float32, exact); its scale is folded into the first
weights' scales. Logits are real (float32); divide by metadata `output_scale` for the emulator's.

It computes what the emulator computes, in float32 instead of exact integers: a requantized code
can differ by one step where the exact value is within float32 rounding of a rounding boundary,
and the residual add and the logits skip the emulator's integer rounding. Codes narrower than 8
bits get a `Clip` after their `DequantizeLinear` (opset-13 Q/DQ has 8-bit types only).
Non-uniform codes (thresholds), weights stored other than as plain codes (level tables,
sign/exponent fields) and codes wider than 8 bits have no QDQ form.
Requires `pip install -e '.[onnx]'`.
"""

from __future__ import annotations

import numpy as np

from quantjax.export.graph import Graph
from quantjax.export.onnx import OPSET, OnnxGraph, channel_shape
from quantjax.intsim.bounds import decode_weight
from quantjax.quantizers.codes import layout_of

_IDENTITY_TOL = 1e-6  # a per-channel requant factor this close to 1 (and no offset) is a no-op


def _expand(scale: np.ndarray, length: int) -> np.ndarray:
  """Per-channel scales over `length` features (a flattened NHWC tensor repeats them)."""
  scale = np.asarray(scale, np.float64).reshape(-1)
  return scale if scale.size == length else np.tile(scale, length // scale.size)


def to_qdq(graph: Graph):
  """The graph as a QDQ `onnx.ModelProto`: uint8 NHWC images in, float32 real logits out.

  Raises:
    ValueError (one line) for a graph with non-uniform or wider-than-8-bit codes.
  """
  g = OnnxGraph()
  tp = g.onnx.TensorProto
  t = graph.tensors
  env: dict[str, tuple[str, int, np.ndarray]] = {}  # graph tensor -> (onnx name, rank, scale)

  def f32(name, a, r=None):
    a = np.asarray(a, np.float32)
    return g.const(name, a if r is None else channel_shape(a, r))

  for n in graph.nodes:
    op, out = n["op"], n["out"]
    if op == "input":
      x = g.op("Transpose", ["image"], f"{out}_nchw", perm=[0, 3, 1, 2])
      x = g.op("Cast", [x], f"{out}_f32", to=tp.FLOAT)
      x = g.op("Mul", [x, f32(f"{out}_mul", t[f"{out}.mul"], 4)], f"{out}_m")
      env[out] = (g.op("Sub", [x, f32(f"{out}_offset", t[f"{out}.offset"], 4)], out), 4,
                  np.ones(1))
    elif op in ("conv", "dense"):
      x, r, in_scale = env[n["in"]]
      if in_scale.size != 1:
        raise ValueError(f"layer {n['name']!r}: its input has per-channel scales")
      w = decode_weight(graph, n)
      layout = layout_of(n["weight"]["fields"])
      if layout != "codes":
        raise ValueError(f"layer {n['name']!r}: {n['weight']['family']} weights, stored in the "
                         f"{layout!r} layout, have no QDQ form (plain uniform codes only)")
      sign = t[f"{out}.sign"]
      w = w * sign  # a negative BatchNorm γ flips the channel
      if w.min() < -128 or w.max() > 127:
        raise ValueError(f"layer {n['name']!r}: weights wider than 8 bits have no QDQ form")
      acc_scale = np.asarray(n["acc_scale"], np.float64)
      w_scale = (acc_scale / float(in_scale[0])).astype(np.float32)
      if op == "conv":
        w_q, axis = np.transpose(w, (3, 2, 0, 1)), 0  # HWIO -> OIHW
      else:
        w_q, axis = w, 1
      wd = g.op("DequantizeLinear", [g.const(f"{out}_w_q", w_q.astype(np.int8)),
                                     g.const(f"{out}_w_scale", w_scale),
                                     g.const(f"{out}_w_zero", np.zeros(w_scale.size, np.int8))],
                f"{out}_w", axis=axis)
      bd = g.op("DequantizeLinear", [g.const(f"{out}_b_q", t[f"{out}.bias"].astype(np.int32)),
                                     g.const(f"{out}_b_scale", acc_scale.astype(np.float32)),
                                     g.const(f"{out}_b_zero", np.zeros(acc_scale.size,
                                                                       np.int32))],
                f"{out}_b", axis=0)
      if op == "conv":
        pads = [n["padding"][0][0], n["padding"][1][0], n["padding"][0][1], n["padding"][1][1]]
        y = g.op("Conv", [x, wd, bd], out, strides=n["strides"], pads=pads)
        env[out] = (y, 4, acc_scale)
      else:
        env[out] = (g.op("Gemm", [x, wd, bd], out), 2, acc_scale)
    elif op == "relu":
      x, r, s = env[n["in"]]
      env[out] = (g.op("Relu", [x], out), r, s)
    elif op == "maxpool":
      x, r, s = env[n["in"]]
      if n["window"] is None:
        env[out] = (g.op("ReduceMax", [x], out, axes=[2, 3], keepdims=0), 2, s)
      else:
        env[out] = (g.op("MaxPool", [x], out, kernel_shape=n["window"], strides=n["strides"]),
                    r, s)
    elif op == "sumpool":  # the emulator's sum; its 1/count sits in the next rescale: a mean here
      x, r, s = env[n["in"]]
      y = g.op("GlobalAveragePool", [x], f"{out}_mean")
      env[out] = (g.op("Flatten", [y], out, axis=1), 2, s / n["count"])
    elif op == "flatten":
      x, r, s = env[n["in"]]
      if r == 4:
        x = g.op("Transpose", [x], f"{out}_nhwc", perm=[0, 2, 3, 1])
      env[out] = (g.op("Flatten", [x], out, axis=1), 2, s)
    elif op == "add":  # both branches are real-valued floats: the rescale is implicit
      (a, r, s), (b, _, _) = env[n["a"]], env[n["b"]]
      env[out] = (g.op("Add", [a, b], out), r, s)
    elif op == "requant":
      env[out] = _requant(g, graph, n, env[n["in"]], out == graph.meta["output"])
    else:
      raise ValueError(f"op {op!r} has no QDQ export")
  h, w_, c = graph.meta["image_shape"]
  final, _, _ = env[graph.meta["output"]]
  logits = g.op("Identity", [final], "logits")
  model = g.model("quantjax_qdq", [("image", tp.UINT8, [None, h, w_, c])],
                  [(logits, tp.FLOAT, [None, graph.meta["num_classes"]])], {"": OPSET},
                  doc="quantjax integer graph as QDQ ONNX (see quantjax.export.qdq)",
                  metadata={"output_scale": repr(graph.meta["output_scale"]),
                            "model": str(graph.meta.get("model"))})
  g.onnx.checker.check_model(model)
  return model


def _requant(g: OnnxGraph, graph: Graph, n, src, is_output: bool):
  """Rescale (only where BatchNorm or pooling left one), then Q/DQ onto the target's codes."""
  t, out = graph.tensors, n["out"]
  x, r, in_scale = src
  if n["kind"] != "dyadic" or n["decode"] is not None and "table" in n["decode"]:
    raise ValueError(f"requantization {out!r} onto {n['target']['family']} levels has no QDQ "
                     "form (uniform codes only)")
  target = float(n["target"]["scale"])
  c = t[f"{out}.m"].size
  # The emulator's u = sign·r·m·2^-shift + o·2^-shift in target steps; the float is r·in_scale.
  step = np.ldexp(t[f"{out}.m"] * t[f"{out}.sign"], -t[f"{out}.shift"]).astype(np.float64)
  factor = step * target / _expand(in_scale, c)
  offset = np.ldexp(t[f"{out}.offset"].astype(np.float64), -t[f"{out}.shift"]) * target
  if np.max(np.abs(factor - 1.0)) > _IDENTITY_TOL:
    x = g.op("Mul", [x, g.const(f"{out}_factor", channel_shape(factor.astype(np.float32), r))],
             f"{out}_scaled")
  if np.any(offset != 0):
    x = g.op("Add", [x, g.const(f"{out}_offset", channel_shape(offset.astype(np.float32), r))],
             f"{out}_shifted")
  if is_output and n["qmax"] - n["qmin"] > 255:  # the 32-bit logits: real values
    return x, r, np.array([target])
  zp, lo, hi = n["zero_point"], n["qmin"], n["qmax"]
  if lo >= 0 and hi <= 255:
    dtype = np.uint8
  elif lo >= -128 and hi <= 127:
    dtype = np.int8
  else:
    raise ValueError(f"codes in [{lo}, {hi}] do not fit 8 bits; QDQ export needs <= 8")
  scale = g.const(f"{out}_scale", np.array(target, np.float32))
  zero = g.const(f"{out}_zero", np.array(zp, dtype))
  q = g.op("QuantizeLinear", [x, scale, zero], f"{out}_q")
  y = g.op("DequantizeLinear", [q, scale, zero], f"{out}_dq")
  info = np.iinfo(dtype)
  if (lo, hi) != (info.min, info.max):  # narrower codes: clip to their range, exactly
    y = g.op("Clip", [y, g.const(f"{out}_lo", np.float32((lo - zp) * np.float32(target))),
                      g.const(f"{out}_hi", np.float32((hi - zp) * np.float32(target)))],
             f"{out}_clip")
  return g.op("Identity", [y], out), r, np.array([target])


def run(model, images: np.ndarray, batch_size: int = 256) -> np.ndarray:
  """Real logits [B, classes] (float32) of uint8 images by onnxruntime."""
  try:
    import onnxruntime as ort
  except ImportError:
    raise ValueError("running QDQ ONNX needs onnxruntime: pip install -e '.[onnx]'") from None
  session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
  images = np.asarray(images, np.uint8)
  return np.concatenate([session.run(None, {"image": images[i:i + batch_size]})[0]
                         for i in range(0, len(images), batch_size)])
