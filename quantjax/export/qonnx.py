"""QONNX of an integer graph: `Quant`, `BipolarQuant`, `Trunc` and FINN's `MultiThreshold`.

The graph is written in the form FINN reaches after streamlining: every tensor holds the
emulator's integer values (as floats, which hold them exactly), so every `Quant` has scale 1 and
zero point 0 (or the activation's zero point) and states only what matters to hardware, the bit
width, signedness and narrow range; the real scales live in the requantization constants and the
model's `output_scale` metadata (real logits = integer logits × output_scale). A graph with real
scales in its `Quant` nodes could not be bit-exact: its float rescales round.

- Input: float pixels 0..255 through `Quant` (UINT8), normalised on the integer grid in float64.
- Weights: the integer weights through `Quant` of their width (`BipolarQuant` when every weight is
  ±1). Weights stored as plain codes (the 'codes' layout: uniform, fixed point) are their codes at
  their stored width; the other layouts (level tables, sign/exponent/mantissa fields: NUUQ, Liss,
  ESB, PoT) are written as the integers they decode to, under a `Quant` of those integers' width:
  QONNX has no level table, index or sign/exponent/mantissa type, so the graph computes exactly
  but no longer says how the weights are stored (the node's doc string names the family).
- MAC: `Conv` in float32, exact while every partial sum is below 2^24 (onnxruntime's Conv has
  no float64 kernel; past that bound the input is split into base-2^k digits, one Conv each);
  `MatMul` in float64. Then sign, int32 bias and the accumulator's saturation to `acc_bits`.
- Requantization onto uniform codes: `Quant(r·m·2^-shift + o·2^-shift)` with the run's rounding
  (`ROUND` is half-even; half-up adds 1/2 and floors), clipping to the codes' range; a
  power-of-two rescale (fixed-point and pow2-scaled layers) is a `Trunc`. Onto non-uniform levels
  (ESB, Liss, PoT activations): `MultiThreshold` with the integer thresholds that the node's
  `m`, `shift`, `offset` and level table imply for the run's rounding mode
  (`rescale.level_thresholds`), then a `Gather` of the level table (codes -> integer levels).
- Residual add: the shortcut times `m·2^-shift`, rounded (`Round` / `Floor`), added.
- qonnx's executor computes `Quant` in float32 (exact below 2^24), so ranges wider than that (the
  32-bit accumulator, the 32-bit logits) are an ONNX `Clip` of float64 integers instead.

Exactness: rescales run in float64, exact while `|r·m + o| < 2^53`, checked at export from bounds
on every tensor (conv results: MAC bound + |bias|). Where the bound is passed, a product with no
offset is split (`m = Σ m_i·2^(h·i)`, each piece exact, see `_rescale_rounded`); one with an
offset (BatchNorm after ReLU) is refused with a one-line error (export with a smaller
`mult_bits`). Then qonnx's executor reproduces the emulator's logits bit for bit. Not
expressible: a wrapping accumulator (`overflow='wrap'`: QONNX has no modular type).
Requires `pip install -e '.[onnx]'` (onnx, onnxruntime, qonnx).
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np

from quantjax.export.graph import Graph
from quantjax.export.onnx import OPSET, OnnxGraph, channel_shape
from quantjax.export.rescale import level_thresholds
from quantjax.intsim.accelerator import Accelerator
from quantjax.intsim.bounds import decode_weight, mac_bound, value_ranges
from quantjax.quantizers.codes import layout_of

DOMAIN = "qonnx.custom_op.general"
QONNX_OPSET = 2  # Trunc v2: the output scale is explicit
_EXACT = 2.0**53  # integers below this are exact in float64
_ROUNDING = {"half_even": "ROUND", "half_up": "FLOOR", "floor": "FLOOR"}  # half_up: +1/2 first


def import_qonnx():
  """The `qonnx` package, or a one-line ValueError saying how to install it."""
  try:
    import qonnx  # noqa: F401
    from qonnx.core.modelwrapper import ModelWrapper
  except ImportError:
    raise ValueError("QONNX export needs the 'qonnx' package: pip install -e '.[onnx]'") from None
  return ModelWrapper


def int_type(lo: int, hi: int) -> tuple[int, bool, bool]:
  """(bits, signed, narrow) of the QONNX integer type whose range is exactly [lo, hi]."""
  for bits in range(1, 65):
    if lo == 0 and hi == 2**bits - 1:
      return bits, False, False
    if lo == 0 and hi == 2**bits - 2 and bits > 1:
      return bits, False, True
    if hi == 2 ** (bits - 1) - 1 and lo == -(2 ** (bits - 1)):
      return bits, True, False
    if hi == 2 ** (bits - 1) - 1 and lo == -hi and bits > 1:
      return bits, True, True
  raise ValueError(f"codes in [{lo}, {hi}] are no QONNX integer type (unsigned, signed or "
                   "narrow b-bit range)")


def level_tables(graph: Graph) -> dict[str, np.ndarray]:
  """Threshold requant output -> its level table, where a consumer decodes its codes."""
  decoded = {(n.get("decode") or {}).get("table") for n in graph.nodes}
  return {n["out"]: graph.tensors[f"{n['out']}.table"] for n in graph.nodes
          if n["op"] == "requant" and n["kind"] == "threshold" and f"{n['out']}.table" in decoded}


def value_bounds(graph: Graph, acc_bits: int = 32) -> dict[str, int]:
  """max |value| of every tensor, decoded (the integers a consumer multiplies or compares)."""
  t = graph.tensors
  ranges = value_ranges(graph)
  acc_max = 2 ** (acc_bits - 1)
  tables = level_tables(graph)
  bounds: dict[str, int] = {}
  for n in graph.nodes:
    op, out = n["op"], n["out"]
    if op == "input":
      bounds[out] = max(abs(v) for v in ranges[out])
    elif op in ("conv", "dense"):
      mac = mac_bound(graph, n, ranges, decode_weight(graph, n))
      bounds[out] = min(mac + int(np.max(np.abs(t[f"{out}.bias"]))), acc_max)
    elif op == "requant":
      if n["kind"] == "dyadic":
        bounds[out] = max(abs(n["qmin"] - n["zero_point"]), abs(n["qmax"] - n["zero_point"]))
      else:
        table = tables.get(out)
        bounds[out] = int(np.max(np.abs(table))) if table is not None else n["num_levels"]
    elif op == "sumpool":
      bounds[out] = bounds[n["in"]] * n["count"]
    elif op == "add":
      rescaled = bounds[n["b"]] * float(np.max(np.ldexp(t[f"{out}.m"], -t[f"{out}.shift"])))
      bounds[out] = min(bounds[n["a"]] + math.ceil(rescaled) + 1, acc_max)
    else:
      bounds[out] = bounds[n["in"]]
  return bounds


def to_qonnx(graph: Graph, *, batch_size: int = 1, accel: Accelerator | None = None):
  """The graph as a QONNX `onnx.ModelProto` (see the module docstring).

  Args:
    graph: an exported integer graph.
    batch_size: the input's batch dimension (QONNX graphs have static shapes).
    accel: the accelerator whose accumulator width and rounding the graph states; saturating
      accumulators only.

  Returns:
    The model: input 'image', float32 [batch, H, W, C] pixels 0..255; output 'logits', float64
    [batch, classes] integer logits (times metadata `output_scale` for real ones).

  Raises:
    ValueError (one line) for what QONNX cannot express or compute exactly.
  """
  import_qonnx()
  accel = accel or Accelerator()
  if accel.overflow != "saturate":
    raise ValueError("QONNX export needs a saturating accumulator (QONNX has no wrapping type)")
  g = OnnxGraph()
  tp = g.onnx.TensorProto
  t = graph.tensors
  bounds = value_bounds(graph, accel.acc_bits)
  tables = level_tables(graph)
  rank: dict[str, int] = {}  # graph tensor -> rank of its float64 ONNX tensor (same name)

  def scalar(name, value):
    return g.const(name, np.array(value, np.float32))

  def quant(x, out, lo, hi, *, zero_point=0, rounding="ROUND", double=True, doc=""):
    """`Quant` of x onto the integers [lo, hi] (codes less zero_point), as float64 if double.

    qonnx's executor returns `Quant` results in float32, exact below 2^24: wider ranges (the
    accumulator, 32-bit logits) are an ONNX `Clip` in float64 instead (x is an integer there).
    """
    if max(abs(lo), abs(hi)) >= 2**24:
      if rounding is not None:  # None: x is an integer already
        x = g.op("Round" if rounding == "ROUND" else "Floor", [x], f"{out}_round")
      return g.op("Clip", [x, g.const(f"{out}_lo", np.array(float(lo))),
                           g.const(f"{out}_hi", np.array(float(hi)))], out, doc_string=doc)
    bits, signed, narrow = int_type(lo + zero_point, hi + zero_point)
    q = out if not double else f"{out}_q"
    g.typed(g.op("Quant", [x, scalar(f"{q}_scale", 1.0), scalar(f"{q}_zeropt", zero_point),
                           scalar(f"{q}_bitwidth", bits)], q, domain=DOMAIN, signed=int(signed),
                 narrow=int(narrow), rounding_mode=rounding or "ROUND", doc_string=doc),
            tp.FLOAT)
    return g.op("Cast", [q], out, to=tp.DOUBLE) if double else q

  def per_channel(name, a, r):
    return g.const(name, channel_shape(np.asarray(a, np.float64), r))

  def check_exact(what, bound):
    if bound >= _EXACT:
      raise ValueError(f"{what}: |r·m + o| may reach 2^{math.log2(bound):.1f}, past float64's "
                       "exact 2^53; export the graph with a smaller mult_bits (e.g. 24)")

  for n in graph.nodes:
    op, out = n["op"], n["out"]
    if op == "input":
      x = quant("image", f"{out}_pixels", 0, 255, double=False, doc="uint8 pixels")
      x = g.op("Transpose", [x], f"{out}_nchw", perm=[0, 3, 1, 2])
      x = g.op("Cast", [x], f"{out}_f64", to=tp.DOUBLE)
      x = g.op("Mul", [x, per_channel(f"{out}_mul", t[f"{out}.mul"], 4)], f"{out}_m")
      g.op("Sub", [x, per_channel(f"{out}_offset", t[f"{out}.offset"], 4)], out)
      rank[out] = 4
    elif op in ("conv", "dense"):
      w = decode_weight(graph, n)
      family = n["weight"]["family"]
      if op == "conv":
        w_onnx = np.transpose(w, (3, 2, 0, 1))  # HWIO -> OIHW
        pads = [n["padding"][0][0], n["padding"][1][0], n["padding"][0][1], n["padding"][1][1]]
      else:
        w_onnx, x = w, n["in"]
      g.const(f"{out}_w_int", w_onnx.astype(np.float32))
      doc = f"{family} weights ({n['weight']['stored_bits']:g} bits stored)"
      if np.all(np.abs(w) == 1):
        wq = g.typed(g.op("BipolarQuant", [f"{out}_w_int", scalar(f"{out}_w_scale", 1.0)],
                          f"{out}_w", domain=DOMAIN, doc_string=doc), tp.FLOAT)
      else:
        lo, hi = int(w.min()), int(w.max())
        # Plain codes keep their stored width; other layouts (tables, sign/exponent fields) are
        # written as the integers they decode to, at those integers' width.
        plain = layout_of(n["weight"]["fields"]) == "codes"
        bits = max(int(n["weight"]["multiplier_bits"]) if plain else 1, _width(lo, hi))
        wq = quant(f"{out}_w_int", f"{out}_w", -(2 ** (bits - 1)), 2 ** (bits - 1) - 1,
                   double=False, doc=doc)
      if op == "conv":
        w_sum = int(np.max(np.sum(np.abs(w.reshape(-1, w.shape[-1])), axis=0)))
        y = _exact_conv(g, n["in"], wq, out, bounds[n["in"]], w_sum, strides=n["strides"],
                        pads=pads)
        rank[out] = 4
      else:
        wq = g.op("Cast", [wq], f"{out}_w_f64", to=tp.DOUBLE)
        y = g.op("MatMul", [x, wq], f"{out}_mac")
        rank[out] = 2
      y = g.op("Mul", [y, per_channel(f"{out}_sign", t[f"{out}.sign"], rank[out])], f"{out}_s")
      y = g.op("Add", [y, per_channel(f"{out}_bias", t[f"{out}.bias"], rank[out])], f"{out}_b")
      half = 2 ** (accel.acc_bits - 1)
      quant(y, out, -half, half - 1, rounding=None,
            doc=f"{accel.acc_bits}-bit saturating accumulator")
    elif op == "relu":
      g.op("Relu", [n["in"]], out)  # on values: the code of zero decodes to 0
      rank[out] = rank[n["in"]]
    elif op == "maxpool":
      if n["window"] is None:
        g.op("ReduceMax", [n["in"]], out, axes=[2, 3], keepdims=0)
        rank[out] = 2
      else:
        g.op("MaxPool", [n["in"]], out, kernel_shape=n["window"], strides=n["strides"])
        rank[out] = 4
    elif op == "sumpool":
      g.op("ReduceSum", [n["in"], g.const(f"{out}_axes", np.array([2, 3], np.int64))], out,
           keepdims=0)
      rank[out] = 2
    elif op == "flatten":
      x = n["in"]
      if rank[x] == 4:
        x = g.op("Transpose", [x], f"{out}_nhwc", perm=[0, 2, 3, 1])
      g.op("Flatten", [x], out, axis=1)
      rank[out] = 2
    elif op == "requant":
      _requant(g, graph, n, rank[n["in"]], bounds[n["in"]], tables.get(out), accel.rounding,
               quant, per_channel, check_exact)
      rank[out] = rank[n["in"]]
    elif op == "add":
      r = rank[n["a"]]
      b = _rescale_rounded(g, n["b"], t[f"{out}.m"], t[f"{out}.shift"], bounds[n["b"]], r,
                           f"{out}_b", accel.rounding)
      y = g.op("Add", [n["a"], b], f"{out}_sum")
      half = 2 ** (accel.acc_bits - 1)
      quant(y, out, -half, half - 1, rounding=None,
            doc=f"{accel.acc_bits}-bit saturating accumulator")
      rank[out] = r
    else:
      raise ValueError(f"op {op!r} has no QONNX export")
  h, w_, c = graph.meta["image_shape"]
  logits = g.op("Identity", [graph.meta["output"]], "logits")
  model = g.model(
      "quantjax_qonnx", [("image", tp.FLOAT, [batch_size, h, w_, c])],
      [(logits, tp.DOUBLE, [batch_size, graph.meta["num_classes"]])],
      {"": OPSET, DOMAIN: QONNX_OPSET},
      doc="quantjax integer graph as QONNX (integer-valued tensors; see quantjax.export.qonnx)",
      metadata={"output_scale": repr(graph.meta["output_scale"]),
                "model": str(graph.meta.get("model")), "acc_bits": str(accel.acc_bits),
                "rounding": accel.rounding})
  return model


def _exact_conv(g: OnnxGraph, x: str, w: str, out: str, x_bound: int, w_sum: int,
                **attrs) -> str:
  """Conv of integer x (float64) by integer w: float32 Convs, each exact, summed in float64.

  onnxruntime's Conv is float32, exact while every partial sum is below 2^24, i.e. while
  `w_sum·max|x| < 2^24` (w_sum: the largest per-channel Σ|w|). Past that x is split into
  base-2^k digits `x = Σ x_i·2^(k·i)` (Floor and Sub in float64), one Conv per digit.
  """
  tp = g.onnx.TensorProto
  limit = 2**24
  digit_bits = int(math.floor(math.log2(limit / max(w_sum, 1) + 1)))  # w_sum·(2^k - 1) < 2^24
  while w_sum * (2**digit_bits - 1) >= limit:
    digit_bits -= 1
  if digit_bits < 1:
    raise ValueError(f"{out}: a per-channel Σ|w| of {w_sum} leaves no exact float32 Conv")
  parts, rest, bound, shift = [], x, x_bound, 0
  while w_sum * bound >= limit:
    i = len(parts)
    hi = g.op("Floor", [g.op("Mul", [rest, g.const(f"{out}_digit{i}_scale", np.array(
        2.0**-digit_bits))], f"{out}_digit{i}_scaled")], f"{out}_rest{i}")
    lo = g.op("Sub", [rest, g.op("Mul", [hi, g.const(f"{out}_digit{i}_unit", np.array(
        2.0**digit_bits))], f"{out}_rest{i}_up")], f"{out}_digit{i}")
    parts.append((lo, shift))
    rest, bound, shift = hi, -(-bound // 2**digit_bits), shift + digit_bits
  parts.append((rest, shift))
  total = None
  for i, (part, part_shift) in enumerate(parts):
    name = f"{out}_mac" if len(parts) == 1 else f"{out}_mac{i}"
    xf = g.op("Cast", [part], f"{name}_xf", to=tp.FLOAT)
    y = g.op("Cast", [g.op("Conv", [xf, w], f"{name}_f32", **attrs)], name, to=tp.DOUBLE)
    if part_shift:
      y = g.op("Mul", [y, g.const(f"{name}_unit", np.array(2.0**part_shift))], f"{name}_up")
    total = y if total is None else g.op("Add", [total, y], f"{name}_sum")
  return total


def _width(lo: int, hi: int) -> int:
  """Bits of the signed type holding [lo, hi]."""
  return max((-lo - 1).bit_length() if lo < 0 else 0, hi.bit_length()) + 1


def _rescale_rounded(g: OnnxGraph, x: str, m: np.ndarray, shift: np.ndarray, x_bound: int,
                     r: int, out: str, rounding: str) -> str:
  """`round(x·m·2^-shift)` (per channel, x integer, m >= 0), exact in float64.

  When `x_bound·m` reaches 2^53, m is split into h-bit pieces `m = Σ m_i·2^(h·i)` so that every
  `A_i = x·m_i·2^(h·i - shift)` is exact; each is cut into an even integer `2·floor(A_i/2)` (so
  half-even ties keep their parity) and a rest in [0, 2), and only the sum of the rests is
  rounded. The integers all share x's sign, so their float64 sum is exact unless it passes 2^53,
  where the result saturates anyway (accumulator or code range).
  """
  pow2 = lambda name, e: g.const(name, channel_shape(np.ldexp(1.0, e), r))  # noqa: E731
  chan = lambda name, a: g.const(name, channel_shape(np.asarray(a, np.float64), r))  # noqa: E731
  if x_bound * float(np.max(m)) < _EXACT:
    y = g.op("Mul", [g.op("Mul", [x, chan(f"{out}_m", m)], f"{out}_xm"),
                     pow2(f"{out}_pow", -shift)], f"{out}_scaled")
    return _round(g, y, out, rounding)
  h = 52 - int(x_bound).bit_length()  # x·m_i < 2^52
  pieces = -(-int(np.max(m)).bit_length() // max(h, 1))
  if h < 1 or 2 * pieces * 2.0 ** int(np.max(shift)) > _EXACT:
    raise ValueError(f"{out}: x·m reaches 2^{math.log2(x_bound * float(np.max(m))):.1f} with "
                     f"shifts up to {int(np.max(shift))}; no exact float64 form (export the graph "
                     "with a smaller mult_bits)")
  half = g.const(f"{out}_half_unit", np.array(0.5))
  two = g.const(f"{out}_two", np.array(2.0))
  evens, rests = None, None
  for i in range(pieces):
    m_i = (m >> (h * i)) & (2**h - 1)
    if not np.any(m_i):
      continue
    p = f"{out}_piece{i}"
    a = g.op("Mul", [g.op("Mul", [x, chan(f"{p}_m", m_i)], f"{p}_xm"),
                     pow2(f"{p}_pow", h * i - shift)], p)
    even = g.op("Mul", [g.op("Floor", [g.op("Mul", [a, half], f"{p}_half")], f"{p}_floor"), two],
                f"{p}_even")
    rest = g.op("Sub", [a, even], f"{p}_rest")
    evens = even if evens is None else g.op("Add", [evens, even], f"{p}_evens")
    rests = rest if rests is None else g.op("Add", [rests, rest], f"{p}_rests")
  return g.op("Add", [evens, _round(g, rests, f"{out}_rounded", rounding)], out)


def _round(g: OnnxGraph, x: str, out: str, rounding: str) -> str:
  """x rounded to an integer with the accelerator's rounding (ONNX `Round` is half-even)."""
  if rounding == "half_even":
    return g.op("Round", [x], out)
  if rounding == "half_up":
    x = g.op("Add", [x, g.const(f"{out}_half", np.array(0.5))], f"{out}_h")
  return g.op("Floor", [x], out)


def _requant(g: OnnxGraph, graph: Graph, n: dict[str, Any], r: int, in_bound: int,
             table: np.ndarray | None, rounding: str, quant, per_channel, check_exact) -> None:
  """A requant node: `Trunc` / `Quant` onto uniform codes, `MultiThreshold` onto levels."""
  t, out, x = graph.tensors, n["out"], n["in"]
  sign = t[f"{out}.sign"]
  if n["kind"] == "threshold":
    th = level_thresholds(t[f"{out}.m"], t[f"{out}.shift"], t[f"{out}.offset"],
                          t[f"{out}.table"], rounding)  # [C, J], this rounding mode's
    th = np.clip(th, -(2**52), 2**52).astype(np.float64)  # exact; no input reaches 2^52
    if np.any(sign < 0):
      x = g.op("Mul", [x, per_channel(f"{out}_sign", sign, r)], f"{out}_signed")
    levels = n["num_levels"]
    index = g.typed(g.op("MultiThreshold", [x, g.const(f"{out}_thresholds", th)], f"{out}_index",
                         domain=DOMAIN, out_dtype=f"UINT{max((levels - 1).bit_length(), 1)}",
                         data_layout="NCHW" if r == 4 else "NC"), g.onnx.TensorProto.DOUBLE)
    if table is None:  # no consumer decodes it (the graph's output): the codes themselves
      g.op("Identity", [index], out)
      return
    index = g.op("Cast", [index], f"{out}_index_i64", to=g.onnx.TensorProto.INT64)
    g.op("Gather", [g.const(f"{out}_levels", table.astype(np.float64)), index], out)
    return
  m, shift, o = t[f"{out}.m"] * sign, t[f"{out}.shift"], t[f"{out}.offset"]
  zp, lo, hi = n["zero_point"], n["qmin"] - n["zero_point"], n["qmax"] - n["zero_point"]
  direct = in_bound * float(np.max(np.abs(m))) + float(np.max(np.abs(o)))
  # Without an offset, a product r·m rounded past 2^53 lies beyond the clip range anyway.
  if direct >= _EXACT and (np.any(o != 0)
                           or (max(abs(lo), abs(hi)) + 1) * 2.0 ** int(np.max(shift)) > _EXACT):
    if np.any(o != 0):
      check_exact(f"requant {out!r}", direct)
    # Wide codes (the 32-bit logits) and large products: the split-multiplier rescale.
    if np.any(sign < 0):
      x = g.op("Mul", [x, per_channel(f"{out}_sign", sign, r)], f"{out}_signed")
    y = _rescale_rounded(g, x, t[f"{out}.m"], shift, in_bound, r, f"{out}_rescaled", rounding)
    quant(y, out, lo, hi, zero_point=zp, rounding=None,
          doc=f"{n['target']['family']} codes, scale {n['target']['scale']:.6g}")
    return
  k = int(shift[0]) - int(m[0]).bit_length() + 1  # m·2^-shift = 2^-k when m is a power of two
  if (np.all(m > 0) and np.all(o == 0) and zp == 0 and k >= 0
      and np.all(np.ldexp(m.astype(np.float64), k - shift) == 1.0)):
    # m·2^-shift = 2^-k on every channel: drop k bits, a Trunc (output scale 2^k in r's units).
    bits, signed, narrow = int_type(lo, hi)
    if rounding == "half_up" and k > 0:
      x = g.op("Add", [x, g.const(f"{out}_half", np.array(2.0 ** (k - 1)))], f"{out}_h")
    f32 = lambda name, v: g.const(name, np.array(v, np.float32))  # noqa: E731
    y = g.typed(g.op("Trunc", [x, f32(f"{out}_scale", 1.0), f32(f"{out}_zeropt", 0.0),
                               f32(f"{out}_in_bitwidth", _width(-in_bound, in_bound)),
                               f32(f"{out}_out_scale", 2.0**k),
                               f32(f"{out}_out_bitwidth", bits)],
                     f"{out}_trunc", domain=DOMAIN, rounding_mode=_ROUNDING[rounding],
                     signed=int(signed), narrow=int(narrow)), g.onnx.TensorProto.DOUBLE)
    g.op("Mul", [y, g.const(f"{out}_unscale", np.array(2.0**-k))], out)
    return
  y = g.op("Mul", [x, per_channel(f"{out}_m", m, r)], f"{out}_rm")
  if np.any(o != 0):
    y = g.op("Add", [y, per_channel(f"{out}_o", o, r)], f"{out}_ro")
  y = g.op("Mul", [y, per_channel(f"{out}_pow", np.ldexp(1.0, -shift), r)], f"{out}_rs")
  mode = _ROUNDING[rounding]
  if rounding == "half_up":
    y = g.op("Add", [y, g.const(f"{out}_half", np.array(0.5))], f"{out}_rh")
  elif rounding == "half_even" and zp % 2:
    # Quant rounds r + zero point; an odd zero point moves half-even's ties: round first.
    y = g.op("Round", [y], f"{out}_rr")
  quant(y, out, lo, hi, zero_point=zp, rounding=mode,
        doc=f"{n['target']['family']} codes, scale {n['target']['scale']:.6g}")


def cleanup(model):
  """qonnx's cleanup (shape inference, constant folding, names) and datatype inference.

  Returns:
    A `qonnx.core.modelwrapper.ModelWrapper`; its input is 'global_in', its output 'global_out'.
  """
  model_wrapper = import_qonnx()
  from qonnx.transformation.infer_datatypes import InferDataTypes
  from qonnx.transformation.infer_shapes import InferShapes
  from qonnx.util.cleanup import cleanup_model

  wrapped = cleanup_model(model_wrapper(model))
  return wrapped.transform(InferShapes()).transform(InferDataTypes())


def execute(model, images: np.ndarray) -> np.ndarray:
  """Integer logits [B, classes] (int64) of uint8 images by qonnx's executor, batch by batch."""
  import_qonnx()
  from qonnx.core.onnx_exec import execute_onnx

  batch = model.get_tensor_shape(model.graph.input[0].name)[0]
  name_in, name_out = model.graph.input[0].name, model.graph.output[0].name
  images = np.asarray(images)
  if images.dtype != np.uint8:
    raise ValueError(f"the graph takes uint8 images; got {images.dtype}")
  out = []
  for start in range(0, len(images), batch):
    chunk = images[start:start + batch].astype(np.float32)
    pad = batch - len(chunk)
    if pad:
      chunk = np.concatenate([chunk, np.zeros((pad, *chunk.shape[1:]), np.float32)])
    with warnings.catch_warnings(record=True) as caught:
      warnings.simplefilter("always")
      logits = execute_onnx(model, {name_in: chunk})[name_out]
    # The executor rounds a tensor that misses its datatype annotation, with a warning: an
    # inexact graph would pass silently.
    for w in caught:
      if "can't be represented" in str(w.message):
        raise ValueError(f"qonnx's executor had to round a tensor: {w.message}")
    out.append(logits[:batch - pad])
  logits = np.concatenate(out)
  if not np.array_equal(logits, np.rint(logits)):
    raise ValueError("the QONNX graph returned non-integer logits")
  return logits.astype(np.int64)
