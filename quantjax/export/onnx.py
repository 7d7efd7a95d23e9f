"""Standard ONNX of an integer graph whose tensors are all uniform codes of at most 8 bits.

Layers on 8-bit codes become `ConvInteger` / `MatMulInteger` (uint8 or int8 inputs, int8 weights,
int32 results); the first layer, whose input is the integer-valued normalised image (13 bits), is
a float `Conv` / `MatMul` on integer-valued float32, exact because the graph's bound
K·max|a|·max|w| < 2^24 is checked. Everything after the MAC (sign, int32 bias, ReLU, max-pool,
requantization `round((acc·m + o)·2^-shift)` with ONNX's `Round`, half to even) runs in float64,
which holds every intermediate exactly when `|acc|·m + |o| < 2^53`: export the graph with
`mult_bits <= 24` (and a 24-bit-bounded accumulator) and onnxruntime's output is bit-exact to the
emulator under half-even rounding; with the default 31-bit multipliers a product can round in the
last place and a code can differ by 1 LSB where the exact value sits within 2^-53 of a tie.
Requires the optional `onnx` package (`pip install -e '.[onnx]'`).
"""

from __future__ import annotations

import os

import numpy as np

from quantjax.export.graph import Graph
from quantjax.intsim.bounds import decode_weight, mac_bound, value_ranges

OPSET = 13


def import_onnx():
  """The `onnx` module, or a one-line ValueError saying how to install it."""
  try:
    import onnx
  except ImportError:
    raise ValueError("ONNX export needs the 'onnx' package: pip install -e '.[onnx]'") from None
  return onnx


def channel_shape(a, rank: int) -> np.ndarray:
  """A per-channel vector shaped to broadcast over NCHW (rank 4) or NC (rank 2)."""
  a = np.asarray(a).reshape(-1)
  return a.reshape((1, -1, 1, 1)) if rank == 4 else a.reshape((1, -1))


class OnnxGraph:
  """The nodes, initializers and value infos of one ONNX graph as it is written."""

  def __init__(self):
    self.onnx = import_onnx()
    self.nodes, self.inits, self.value_info = [], [], []

  def const(self, name: str, array) -> str:
    self.inits.append(self.onnx.numpy_helper.from_array(np.asarray(array), name))
    return name

  def op(self, kind: str, inputs, out: str, *, domain: str | None = None, **attrs) -> str:
    self.nodes.append(self.onnx.helper.make_node(kind, list(inputs), [out], domain=domain,
                                                 **attrs))
    return out

  def typed(self, name: str, elem_type: int) -> str:
    """Declares `name`'s element type (custom ops' outputs, which ONNX cannot infer)."""
    self.value_info.append(self.onnx.helper.make_tensor_value_info(name, elem_type, None))
    return name

  def model(self, name: str, inputs, outputs, opsets: dict[str, int], doc: str = "",
            metadata: dict[str, str] | None = None):
    """The `onnx.ModelProto`; inputs and outputs are `(name, elem_type, shape)`."""
    helper = self.onnx.helper
    graph = helper.make_graph(
        self.nodes, name, [helper.make_tensor_value_info(*i) for i in inputs],
        [helper.make_tensor_value_info(*o) for o in outputs], self.inits,
        value_info=self.value_info)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid(d, v)
                                                    for d, v in opsets.items()], doc_string=doc)
    for key, value in (metadata or {}).items():
      model.metadata_props.add(key=key, value=value)
    return model


def to_onnx(graph: Graph):
  """The graph as an `onnx.ModelProto` taking uint8 NHWC images and returning int32 logits."""
  g = OnnxGraph()
  onnx = g.onnx
  TensorProto = onnx.TensorProto
  t = graph.tensors
  ranges = value_ranges(graph)
  names = {}  # graph tensor -> (onnx name, kind: 'codes' | 'double' | 'int', rank)
  const, op = g.const, g.op

  for n in graph.nodes:
    kind, out = n["op"], n["out"]
    if kind == "input":
      x = op("Transpose", ["image"], f"{out}_nchw", perm=[0, 3, 1, 2])
      x = op("Cast", [x], f"{out}_i32", to=TensorProto.INT32)
      x = op("Mul", [x, const(f"{out}_mul", channel_shape(t[f"{out}.mul"], 4).astype(np.int32))],
             f"{out}_m")
      x = op("Sub", [x, const(f"{out}_off", channel_shape(t[f"{out}.offset"], 4).astype(
          np.int32))], f"{out}_v")
      names[out] = (x, "int", 4)
    elif kind in ("conv", "dense"):
      src, src_kind, rank = names[n["in"]]
      w = decode_weight(graph, n)
      if mac_bound(graph, n, ranges, w) >= 2**24:
        raise ValueError(f"layer {n['name']!r}: MAC bound 2^24 or more; ONNX export needs it below")
      if kind == "conv":
        w_onnx = np.transpose(w, (3, 2, 0, 1))  # HWIO -> OIHW
        pads = [n["padding"][0][0], n["padding"][1][0], n["padding"][0][1], n["padding"][1][1]]
        attrs = {"strides": n["strides"], "pads": pads}
      else:
        w_onnx, attrs = w, {}
      decode = n["decode"]
      if src_kind == "codes":
        if decode is None or "zero_point" not in decode or decode["zero_point"] != 0:
          raise ValueError(f"layer {n['name']!r}: ONNX export needs uniform input codes with "
                           "zero point 0")
        if w.min() < -128 or w.max() > 127:
          raise ValueError(f"layer {n['name']!r}: weights wider than 8 bits")
        wn = const(f"{out}_w", w_onnx.astype(np.int8))
        y = op("ConvInteger" if kind == "conv" else "MatMulInteger", [src, wn], f"{out}_acc",
               **attrs)
        y = op("Cast", [y], f"{out}_accd", to=TensorProto.DOUBLE)
      else:  # integer-valued input wider than 8 bits: float32 MAC, exact below 2^24
        xf = op("Cast", [src], f"{out}_xf", to=TensorProto.FLOAT)
        wn = const(f"{out}_wf", w_onnx.astype(np.float32))
        y = op("Conv" if kind == "conv" else "MatMul", [xf, wn], f"{out}_accf", **attrs)
        y = op("Cast", [y], f"{out}_accd", to=TensorProto.DOUBLE)
      out_rank = 4 if kind == "conv" else 2
      y = op("Mul", [y, const(f"{out}_sign", channel_shape(t[f"{out}.sign"], out_rank).astype(
          np.float64))], f"{out}_signed")
      y = op("Add", [y, const(f"{out}_bias", channel_shape(t[f"{out}.bias"], out_rank).astype(
          np.float64))], f"{out}_y")
      names[out] = (y, "double", out_rank)
    elif kind == "relu":
      src, src_kind, rank = names[n["in"]]
      if src_kind != "double" or n["zero"] != 0:
        raise ValueError("ONNX export supports ReLU on accumulators only")
      names[out] = (op("Relu", [src], out), "double", rank)
    elif kind == "maxpool":
      src, src_kind, rank = names[n["in"]]
      if src_kind != "double":
        raise ValueError("ONNX export supports max-pool on accumulators only")
      if n["window"] is None:
        y = op("ReduceMax", [src], out, axes=[2, 3], keepdims=0)
        names[out] = (y, "double", 2)
      else:
        names[out] = (op("MaxPool", [src], out, kernel_shape=n["window"], strides=n["strides"]),
                      "double", rank)
    elif kind == "flatten":
      src, src_kind, rank = names[n["in"]]
      y = op("Transpose", [src], f"{out}_nhwc", perm=[0, 2, 3, 1]) if rank == 4 else src
      names[out] = (op("Flatten", [y], out, axis=1), src_kind, 2)
    elif kind == "requant":
      src, src_kind, rank = names[n["in"]]
      if n["kind"] != "dyadic" or n["decode"] is not None or src_kind != "double":
        raise ValueError("ONNX export supports uniform (dyadic) requantization of accumulators")
      cs = lambda a, r=rank: channel_shape(a, r).astype(np.float64)  # noqa: E731
      m = t[f"{out}.m"] * t[f"{out}.sign"]
      y = op("Mul", [src, const(f"{out}_mult", cs(m))], f"{out}_rm")
      y = op("Add", [y, const(f"{out}_o", cs(t[f"{out}.offset"]))], f"{out}_ro")
      y = op("Mul", [y, const(f"{out}_pow", cs(np.ldexp(1.0, -t[f"{out}.shift"])))], f"{out}_rs")
      y = op("Round", [y], f"{out}_r")
      y = op("Add", [y, const(f"{out}_z", np.array(float(n["zero_point"])))], f"{out}_rz")
      lo, hi = n["qmin"], n["qmax"]
      y = op("Clip", [y, const(f"{out}_lo", np.array(float(lo))),
                      const(f"{out}_hi", np.array(float(hi)))], f"{out}_c")
      if out == graph.meta["output"]:
        names[out] = (op("Cast", [y], out, to=TensorProto.INT32), "int", rank)
      else:
        if lo < -128 or hi > 255 or (lo < 0 and hi > 127):
          raise ValueError(f"codes in [{lo}, {hi}] do not fit 8 bits; ONNX export needs <= 8")
        dtype = TensorProto.UINT8 if lo >= 0 else TensorProto.INT8
        names[out] = (op("Cast", [y], out, to=dtype), "codes", rank)
    else:
      raise ValueError(f"op {kind!r} has no ONNX export (exportable: input, conv, dense, relu, "
                       "maxpool, flatten, requant)")
  h, w_, c = graph.meta["image_shape"]
  final, _, _ = names[graph.meta["output"]]
  model = g.model("quantjax_int", [("image", TensorProto.UINT8, [None, h, w_, c])],
                  [(final, TensorProto.INT32, [None, graph.meta["num_classes"]])], {"": OPSET})
  onnx.checker.check_model(model)
  return model


FORMATS = ("onnx", "qonnx", "qdq")


def save_onnx(graph: Graph, path: str, fmt: str, *, batch_size: int = 1) -> None:
  """Writes `graph` as a .onnx file: 'onnx' (this module), 'qonnx' (after qonnx's cleanup) or 'qdq'.

  Raises:
    ValueError (one line) for an unknown format or what the format cannot express.
  """
  if fmt == "onnx":
    model = to_onnx(graph)
  elif fmt == "qonnx":
    from quantjax.export import qonnx

    model = qonnx.cleanup(qonnx.to_qonnx(graph, batch_size=batch_size)).model
  elif fmt == "qdq":
    from quantjax.export import qdq

    model = qdq.to_qdq(graph)
  else:
    raise ValueError(f"format={fmt!r} is not valid; choose one of {', '.join(FORMATS)}")
  directory = os.path.dirname(os.path.abspath(path))
  if not os.path.isdir(directory):
    raise ValueError(f"{path!r}: directory {directory!r} does not exist")
  if os.path.isdir(path):
    raise ValueError(f"{path!r} is a directory; an ONNX export is one file")
  import_onnx().save(model, path)
