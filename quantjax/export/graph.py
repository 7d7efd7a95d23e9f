"""The integer graph: nodes over integer tensors, and the builder that lowers a trained model.

A graph is `{'nodes': [...], ...}` (JSON) plus named integer arrays (`Graph.tensors`). Node ops and
what the emulator (quantjax.intsim) computes for each, on int tensors laid out NHWC:

- `input`: uint8 image `p` -> `p·mul[c] - offset[c]`: the normalised image `(p/255 - mean)/std` in
  units of `input_scale` (`input_frac_bits` fractional bits below the pixel step).
- `conv` / `dense`: `sign[c]·Σ value(x)·w + bias[c]` in the accumulator (width, saturate or wrap
  set per run). `value` decodes the input codes (`decode`: none, a zero point, or a table) and `w`
  decodes the stored weight fields (see quantjax.export.codes). The bias is int32 in the
  accumulator's scale. `sign` (±1 per output channel) comes from BatchNorm folding with γ < 0.
- `relu`: `max(x, zero)`; `maxpool` (window or global) and `sumpool` (global: the sum; the 1/HW
  of an average pool is folded into the next rescale); `flatten` (NHWC order, as the models).
- `requant`: from an int tensor (or decoded codes) `r` to the codes of the next quantizer, through
  `v = sign·r·m + o` (`v·2^-shift` is the value in the target's units): 'dyadic'
  `clip(round(v >> shift) + zero_point, qmin, qmax)` onto uniform codes, or 'threshold' onto the
  non-uniform integer levels stored with it (`<out>.table`), the code the index of the level `v`
  rounds to (quantjax.export.rescale.level_thresholds). BatchNorm after ReLU (the Sequential net)
  is folded into `m` and `o` (an integer per-channel scale and offset), not into the preceding
  conv.
- `add`: `a + round((b·m) >> shift)`: the residual add, rescaling the shortcut `b` to `a`'s scale.

The last node's output is the logits as int32 at `output_scale` (a per-channel rescale of the
classifier's accumulator onto one scale, so argmax over the integers is the prediction).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from quantjax.export import codes as codes_lib
from quantjax.export import rescale

FORMAT_VERSION = 2  # 2: threshold requants store m, shift, offset and one level table
INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1


@dataclasses.dataclass
class Graph:
  """An exported integer model: JSON-able `meta` and `nodes`, and named int64 arrays."""

  meta: dict[str, Any]
  nodes: list[dict[str, Any]]
  tensors: dict[str, np.ndarray]  # name -> int64 array
  tensor_bits: dict[str, tuple[int, bool]]  # name -> (stored bits, signed)

  def node(self, name: str) -> dict[str, Any]:
    for n in self.nodes:
      if n.get("name") == name or n["out"] == name:
        return n
    raise KeyError(name)

  def layers(self) -> list[dict[str, Any]]:
    return [n for n in self.nodes if n["op"] in ("conv", "dense")]


@dataclasses.dataclass
class Tensor:
  """Builder-side view of a tensor: its integers' real scale and pending BatchNorm affine."""

  name: str
  channels: int
  scale: np.ndarray  # [C] or [1] float64: real value = scale · integer value
  act: codes_lib.ActCodes | None = None  # codes of a quantizer (None: plain integers)
  affine: tuple[np.ndarray, np.ndarray] | None = None  # real = A·(scale·value) + B, pending
  producer: str | None = None  # the conv/dense node whose raw accumulator this is (for folding)
  hw: tuple[int, int] | None = None  # spatial size (None once flattened or pooled globally)
  consumer: str | None = None  # the layer whose input codes these already are
  float_bias: np.ndarray | None = None  # the producer's bias, unrounded (BatchNorm folding)
  table: str | None = None  # the stored level table its 'table' codes decode with


def _same_pad(n: int, k: int, s: int) -> tuple[int, int]:
  """XLA's SAME padding (low, high) of one spatial axis."""
  out = -(-n // s)
  total = max((out - 1) * s + k - n, 0)
  return total // 2, total - total // 2


class Builder:
  """Appends nodes; each method returns the new Tensor (see the module docstring for the ops)."""

  def __init__(self, mult_bits: int = 31, input_frac_bits: int = 4):
    self.nodes: list[dict[str, Any]] = []
    self.tensors: dict[str, np.ndarray] = {}
    self.tensor_bits: dict[str, tuple[int, bool]] = {}
    self.mult_bits = mult_bits
    self.input_frac_bits = input_frac_bits
    self._count = 0

  def _name(self, op: str) -> str:
    self._count += 1
    return f"t{self._count}_{op}"

  def _put(self, name: str, array, bits: int | None = None, signed: bool | None = None) -> str:
    a = np.asarray(array, np.int64)
    if signed is None:
      signed = bool(a.size and a.min() < 0)
    if bits is None:
      bits = codes_lib.int_bits(a) if a.size else 1
      if signed and bits == codes_lib.int_bits(np.abs(a)) and a.size and a.min() < 0:
        bits = codes_lib.int_bits(a)
    self.tensors[name] = a
    self.tensor_bits[name] = (int(bits), bool(signed))
    return name

  # -- nodes ---------------------------------------------------------------------------------

  def image(self, shape: tuple[int, int, int], mean, std) -> Tensor:
    """The uint8 image, normalised as the data pipeline does, on an integer grid."""
    std = np.asarray(std, np.float64).reshape(-1)
    mean = np.asarray(mean, np.float64).reshape(-1)
    pixel_scale = 1.0 / (255.0 * std)  # real value per pixel step, per channel
    base = float(np.min(pixel_scale)) * 2.0**-self.input_frac_bits
    mul = np.rint(pixel_scale / base).astype(np.int64)
    offset = np.rint((mean / std) / base).astype(np.int64)
    out = self._name("input")
    self.nodes.append({"op": "input", "out": out, "shape": list(shape)})
    self._put(f"{out}.mul", mul)
    self._put(f"{out}.offset", offset)
    return Tensor(out, shape[-1], np.array([base]), hw=(int(shape[0]), int(shape[1])))

  def _decode(self, x: Tensor) -> tuple[dict[str, Any] | None, np.ndarray]:
    """The consumer-side decoding of x's codes and every integer value it can hold."""
    if x.act is None:
      return None, None
    if x.act.kind == "table":
      if x.table is None:
        raise ValueError(f"codes {x.name!r} on a level table that no requant stored")
      return {"table": x.table}, x.act.table
    return {"zero_point": int(x.act.zero_point)}, x.act.values()

  def layer(self, op: str, name: str, x: Tensor, wc: codes_lib.WeightCodes, bias: np.ndarray | None,
            strides=(1, 1), padding=None) -> Tensor:
    """A conv or dense layer on x's integer values: the raw accumulator (int32, + bias)."""
    if x.affine is not None:
      raise ValueError(f"layer {name!r}: its input has a pending BatchNorm (needs a requant)")
    if x.scale.size != 1:
      raise ValueError(f"layer {name!r}: its input has per-channel scales; a per-input-channel "
                       "scale cannot be factored out of the accumulation (quantize this input)")
    decode, in_values = self._decode(x)
    scale = float(x.scale[0]) * wc.scale  # [C_out]
    out = self._name(op)
    node = {"op": op, "name": name, "in": x.name, "out": out, "decode": decode,
            "kernel_shape": list(wc.values.shape),
            "weight": {"family": wc.family, "multiplier": wc.multiplier,
                       "multiplier_bits": wc.multiplier_bits, "stored_bits": wc.stored_bits,
                       "fields": sorted(wc.fields), "meta": wc.meta},
            "in_value_range": None if in_values is None else [int(in_values.min()),
                                                              int(in_values.max())],
            "acc_scale": [float(s) for s in scale]}
    hw = None
    if op == "conv":
      kh, kw = wc.values.shape[:2]
      if padding == "SAME":
        padding = [_same_pad(n, k, s) for n, k, s in zip(x.hw, (kh, kw), strides, strict=True)]
      elif padding == "VALID":
        padding = [(0, 0), (0, 0)]
      node["strides"] = [int(s) for s in strides]
      node["padding"] = [[int(lo), int(hi)] for lo, hi in padding]
      hw = tuple((n + lo + hi - k) // s + 1 for n, (lo, hi), k, s in
                 zip(x.hw, padding, (kh, kw), strides, strict=True))
    for field, (arr, bits, signed) in wc.fields.items():
      self._put(f"{out}.w.{field}", arr, bits, signed)
    self._put(f"{out}.bias", self._bias_int(bias, scale, wc.values.shape[-1]), 32, True)
    self._put(f"{out}.sign", np.ones(wc.values.shape[-1], np.int64), 2, True)
    self.nodes.append(node)
    return Tensor(out, wc.values.shape[-1], scale, producer=out, hw=hw,
                  float_bias=None if bias is None else np.asarray(bias, np.float64))

  @staticmethod
  def _bias_int(bias, scale, channels) -> np.ndarray:
    if bias is None:
      return np.zeros(channels, np.int64)
    b = np.rint(np.asarray(bias, np.float64) / scale)
    return np.clip(b, INT32_MIN, INT32_MAX).astype(np.int64)

  def batch_norm(self, x: Tensor, bn_params: dict, bn_stats: dict, eps: float = 1e-5) -> Tensor:
    """BatchNorm: folded into the producing conv when x is its raw accumulator, else pending.

    Folding keeps the weight codes: the per-channel scale becomes |A|·s, a negative A flips the
    channel's sign, and the bias becomes `round((A·(b - mean) + beta) / (|A|·s))` in int32 (b the
    conv's float bias, carried on x, re-derived through the fold unrounded).
    """
    a = np.asarray(bn_params["scale"], np.float64) / np.sqrt(
        np.asarray(bn_stats["var"], np.float64) + eps)
    b = np.asarray(bn_params["bias"], np.float64) - a * np.asarray(bn_stats["mean"], np.float64)
    if x.producer is not None and x.affine is None:
      node = self.node_by_out(x.producer)
      conv_bias = 0.0 if x.float_bias is None else x.float_bias
      new_scale = np.abs(a) * x.scale
      sign = np.where(a < 0, -1, 1)
      self._put(f"{x.name}.sign", sign, 2, True)
      self._put(f"{x.name}.bias", self._bias_int(a * conv_bias + b, new_scale, x.channels), 32,
                True)
      node["acc_scale"] = [float(s) for s in new_scale]
      node["folded_bn"] = True
      return Tensor(x.name, x.channels, new_scale, producer=x.producer, hw=x.hw)
    if x.affine is not None:
      a0, b0 = x.affine
      a, b = a * a0, a * b0 + b
    return dataclasses.replace(x, affine=(a, b), producer=None)

  def node_by_out(self, out: str) -> dict[str, Any]:
    for n in self.nodes:
      if n["out"] == out:
        return n
    raise KeyError(out)

  def relu(self, x: Tensor) -> Tensor:
    if x.affine is not None:
      raise ValueError("ReLU after a pending BatchNorm: requantize first")
    zero = 0
    if x.act is not None:
      if x.act.kind == "table":
        hits = np.nonzero(x.act.table == 0)[0]
        if not hits.size:
          raise ValueError(f"ReLU on {x.act.family} codes without a zero level")
        zero = int(hits[0])
      else:
        zero = int(x.act.zero_point)
    out = self._name("relu")
    self.nodes.append({"op": "relu", "in": x.name, "out": out, "zero": zero})
    return dataclasses.replace(x, name=out, producer=None)

  def maxpool(self, x: Tensor, window=None, strides=None) -> Tensor:
    """Max-pool over codes or integers (monotone requantization commutes with it)."""
    if x.affine is not None:
      raise ValueError("max-pool after a pending BatchNorm: requantize first")
    out = self._name("maxpool")
    self.nodes.append({"op": "maxpool", "in": x.name, "out": out,
                       "window": None if window is None else list(window),
                       "strides": None if strides is None else list(strides)})
    hw = None if window is None else tuple(
        (n - k) // s + 1 for n, k, s in zip(x.hw, window, strides, strict=True))
    return dataclasses.replace(x, name=out, producer=None, hw=hw)

  def sumpool(self, x: Tensor) -> Tensor:
    """Global sum over the spatial axes (an average pool's integer part)."""
    if x.act is not None or x.affine is not None:
      raise ValueError("average pool is supported on accumulators only")
    out = self._name("sumpool")
    self.nodes.append({"op": "sumpool", "in": x.name, "out": out,
                       "count": int(x.hw[0] * x.hw[1])})
    return Tensor(out, x.channels, x.scale, hw=None)

  @staticmethod
  def rescale(x: Tensor, numerator: float = 1.0, denominator: float = 1.0) -> Tensor:
    """x times `numerator / denominator` (> 0), kept in the scale: no node.

    The factor reaches the next rescale's multiplier, e.g. an average pool's 1/HW.
    """
    factor = numerator / denominator
    if not factor > 0 or x.act is not None:
      raise ValueError(f"a factor {factor!r} on {'codes' if x.act else 'integers'} has no "
                       "integer form (positive factors on accumulators only)")
    affine = None if x.affine is None else (x.affine[0], x.affine[1] * numerator / denominator)
    return dataclasses.replace(x, scale=x.scale * numerator / denominator, affine=affine,
                               producer=None)

  def flatten(self, x: Tensor, spatial: int) -> Tensor:
    out = self._name("flatten")
    self.nodes.append({"op": "flatten", "in": x.name, "out": out})
    scale = np.tile(x.scale, spatial) if x.scale.size > 1 else x.scale
    return dataclasses.replace(x, name=out, channels=x.channels * spatial, scale=scale,
                               producer=None, hw=None)

  def requant(self, x: Tensor, target: codes_lib.ActCodes) -> Tensor:
    """Requantizes x (integers or codes, with any pending affine) onto `target`'s codes."""
    decode, _ = self._decode(x)
    a, b = x.affine if x.affine is not None else (np.ones(1), np.zeros(1))
    c = x.channels
    scale = np.broadcast_to(x.scale, (c,))
    a = np.broadcast_to(a, (c,))
    b = np.broadcast_to(b, (c,))
    sign = np.where(a < 0, -1, 1)
    mu = np.abs(a) * scale / target.scale  # real target-units per input integer
    beta = b / target.scale
    out = self._name("requant")
    node = {"op": "requant", "in": x.name, "out": out, "decode": decode, "kind": None,
            "target": {"family": target.family, "kind": target.kind, "bits": target.bits,
                       "scale": target.scale}}
    self._put(f"{out}.sign", sign, 2, True)
    m, shift, o = rescale.dyadic(mu, beta, self.mult_bits)
    self._put(f"{out}.m", m, self.mult_bits + 1, True)
    self._put(f"{out}.shift", shift, 7, False)
    self._put(f"{out}.offset", o, 64, True)
    table = None
    if target.kind == "uniform":
      node.update(kind="dyadic", qmin=target.qmin, qmax=target.qmax,
                  zero_point=target.zero_point)
    else:  # the levels, stored once: this node's arithmetic and its consumers' decode read them
      node.update(kind="threshold", num_levels=int(target.table.size))
      table = self._put(f"{out}.table", target.table)
    self.nodes.append(node)
    return Tensor(out, c, np.array([target.scale]), act=target, hw=x.hw, consumer=x.consumer,
                  table=table)

  def add(self, a: Tensor, b: Tensor) -> Tensor:
    """Residual add of two accumulators: b rescaled (dyadic, per channel) to a's scale."""
    for t in (a, b):
      if t.act is not None or t.affine is not None:
        raise ValueError("residual add is supported on accumulators only")
    mu = np.broadcast_to(b.scale, (b.channels,)) / np.broadcast_to(a.scale, (a.channels,))
    m, shift, o = rescale.dyadic(mu, np.zeros_like(mu), self.mult_bits)
    out = self._name("add")
    self.nodes.append({"op": "add", "a": a.name, "b": b.name, "in": a.name, "out": out})
    self._put(f"{out}.m", m, self.mult_bits + 1, True)
    self._put(f"{out}.shift", shift, 7, False)
    return Tensor(out, a.channels, a.scale, hw=a.hw)

  def logits(self, x: Tensor) -> tuple[Tensor, float]:
    """The classifier's accumulator rescaled per class onto one scale: int32 logits."""
    if x.act is not None:  # an output quantizer already put the logits on one scale
      if x.act.kind != "uniform":
        raise ValueError("logits on non-uniform output codes are not supported")
      return x, float(x.act.scale)
    scale = np.broadcast_to(x.scale, (x.channels,))
    if x.affine is not None:
      raise ValueError("logits with a pending affine are not supported")
    target = codes_lib.ActCodes("logits", "uniform", float(np.min(scale)), 32, INT32_MIN,
                                INT32_MAX, 0)
    return self.requant(x, target), target.scale

  def finish(self, out: Tensor, output_scale: float, meta: dict[str, Any]) -> Graph:
    meta = {"format": "quantjax-int", "version": FORMAT_VERSION, "output": out.name,
            "output_scale": float(output_scale), "mult_bits": self.mult_bits,
            "input_frac_bits": self.input_frac_bits, **meta}
    return Graph(meta, self.nodes, self.tensors, self.tensor_bits)
