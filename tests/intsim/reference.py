"""An independent NumPy int64 reference of the integer graph, used only by the tests.

Written apart from quantjax.intsim: conv as a loop over kernel positions of int64 einsums, ESB
weights multiplied as significand products shifted by the exponent (the hardware's form), power-of-
two weights as shifts, rounding with Python-style floor division. It reads the stored fields, not
the emulator's decoded weights.
"""

from __future__ import annotations

import numpy as np


def _field(graph, node, name):
  values = np.asarray(graph.tensors[f"{node['out']}.w.{name}"], np.int64)
  return values.reshape(node["kernel_shape"])


def _terms(graph, node):
  """The weight as a list of (integer significand tensor, left shift): w = Σ sig << shift.

  Read by the stored fields alone (their names, as the format's layouts define them), never by
  the quantizer that wrote them.
  """
  names = set(node["weight"]["fields"])
  meta = node["weight"]["meta"]
  if names == {"codes"}:
    return [(_field(graph, node, "codes"), 0)]
  if names == {"index", "table"}:
    table = np.asarray(graph.tensors[f"{node['out']}.w.table"], np.int64).reshape(-1)
    return [(table[_field(graph, node, "index")], 0)]
  sign = np.where(_field(graph, node, "sign") == 1, -1, 1)
  if names == {"sign", "mantissa"}:  # odd integers ±(2m + 1)
    return [(sign * (2 * _field(graph, node, "mantissa") + 1), 0)]
  if names == {"sign", "exponent", "mantissa"}:
    L = meta["mantissa_bits"]
    f, mant = _field(graph, node, "exponent"), _field(graph, node, "mantissa")
    terms = [(np.where(f == 0, sign * mant, 0), 0)]  # denormals: mantissa, no shift
    for e in range(1, int(f.max(initial=0)) + 1):  # normals: (2^L + mant) << (e - 1)
      terms.append((np.where(f == e, sign * (2**L + mant), 0), e - 1))
    return terms
  assert names == {"sign", "exponent"}, f"unknown weight fields {sorted(names)}"
  code = _field(graph, node, "exponent")  # ±1 << (code - 1)
  terms = []
  for c in range(1, int(code.max(initial=0)) + 1):
    terms.append((np.where(code == c, sign, 0), c - 1))
  return terms or [(np.zeros_like(code), 0)]


def _decode(graph, x, decode):
  if decode is None:
    return x
  if "table" in decode:
    return np.asarray(graph.tensors[decode["table"]], np.int64)[x]
  return x - decode["zero_point"]


def _conv(x, w, strides, padding):
  (pt, pb), (pl, pr) = padding
  x = np.pad(x, ((0, 0), (pt, pb), (pl, pr), (0, 0)))
  kh, kw = w.shape[:2]
  sh, sw = strides
  ho = (x.shape[1] - kh) // sh + 1
  wo = (x.shape[2] - kw) // sw + 1
  out = np.zeros((x.shape[0], ho, wo, w.shape[-1]), np.int64)
  for i in range(kh):
    for j in range(kw):
      patch = x[:, i:i + sh * (ho - 1) + 1:sh, j:j + sw * (wo - 1) + 1:sw, :]
      out += np.einsum("bhwc,cd->bhwd", patch, w[i, j])
  return out


def _accumulator(s, acc_bits, overflow):
  lo, hi = -(2 ** (acc_bits - 1)), 2 ** (acc_bits - 1) - 1
  count = int(np.sum((s < lo) | (s > hi)))
  if overflow == "saturate":
    return np.clip(s, lo, hi), count
  return (s - lo) % (2**acc_bits) + lo, count


def _shift_round(t, shift, rounding):
  shift = np.broadcast_to(shift, t.shape)
  div = np.left_shift(np.int64(1), shift)
  q, rem = np.divmod(t, div)
  if rounding == "floor":
    return q
  half = div // 2  # 0 when shift == 0 (then rem == 0 and nothing rounds)
  above = (shift > 0) & (rem > half)
  tie = (shift > 0) & (rem == half)
  if rounding == "half_up":
    return q + (above | tie)
  return q + (above | (tie & (q % 2 == 1)))


def _nearest_level(v, shift, levels, rounding):
  """Index of the level `v·2^-shift` rounds to (its last axis is the channel's), exactly.

  Boundaries are Python integers (no overflow), compared with `v` directly: the midpoint of
  levels j, j+1 is passed when `2v >= (L_j + L_j+1)·2^shift`, a tie going up for half_up and to
  the even index for half_even; floor passes level j+1 when `v >= L_j+1·2^shift`.
  """
  levels = [int(x) for x in levels]
  code = np.zeros(v.shape, np.int64)
  for c, s in enumerate(int(x) for x in np.broadcast_to(shift, v.shape[-1:])):
    vc = v[..., c]
    for j in range(len(levels) - 1):
      if rounding == "floor":
        passed = _at_least(vc, levels[j + 1] << s)
      else:
        twice = (levels[j] + levels[j + 1]) << s  # 2v against this
        above = _at_least(vc, twice // 2 + 1)  # 2v > twice
        tie = np.zeros(vc.shape, bool) if twice % 2 else _equal(vc, twice // 2)
        passed = above | (tie & (rounding == "half_up" or (j + 1) % 2 == 0))
      code[..., c] += passed
  return code


def _at_least(v, bound: int):
  """v >= bound for int64 v and a Python integer bound of any size."""
  if bound > np.iinfo(np.int64).max:
    return np.zeros(v.shape, bool)
  if bound < np.iinfo(np.int64).min:
    return np.ones(v.shape, bool)
  return v >= bound


def _equal(v, value: int):
  if not np.iinfo(np.int64).min <= value <= np.iinfo(np.int64).max:
    return np.zeros(v.shape, bool)
  return v == value


def run(graph, images, *, acc_bits=32, overflow="saturate", rounding="half_even"):
  """(output integers, {layer or add: overflow count}, {layer: max |sum|}) for uint8 `images`."""
  t = graph.tensors
  env = {}
  overflows, max_abs = {}, {}
  for n in graph.nodes:
    op, out = n["op"], n["out"]
    if op == "input":
      env[out] = images.astype(np.int64) * t[f"{out}.mul"] - t[f"{out}.offset"]
    elif op in ("conv", "dense"):
      x = _decode(graph, env[n["in"]], n["decode"])
      s = 0
      for sig, shift in _terms(graph, n):
        if op == "conv":
          y = _conv(x, sig, n["strides"], n["padding"])
        else:
          y = np.einsum("bi,io->bo", x, sig)
        s = s + np.left_shift(y, shift)
      s = s * t[f"{out}.sign"] + t[f"{out}.bias"]
      env[out], overflows[n["name"]] = _accumulator(s, acc_bits, overflow)
      max_abs[n["name"]] = int(np.max(np.abs(s)))
    elif op == "relu":
      env[out] = np.maximum(env[n["in"]], n["zero"])
    elif op == "maxpool":
      x = env[n["in"]]
      if n["window"] is None:
        env[out] = x.max(axis=(1, 2))
      else:
        (kh, kw), (sh, sw) = n["window"], n["strides"]
        ho, wo = (x.shape[1] - kh) // sh + 1, (x.shape[2] - kw) // sw + 1
        y = np.full((x.shape[0], ho, wo, x.shape[3]), np.iinfo(np.int64).min)
        for i in range(kh):
          for j in range(kw):
            y = np.maximum(y, x[:, i:i + sh * (ho - 1) + 1:sh, j:j + sw * (wo - 1) + 1:sw])
        env[out] = y
    elif op == "sumpool":
      env[out] = env[n["in"]].sum(axis=(1, 2))
    elif op == "flatten":
      env[out] = env[n["in"]].reshape(env[n["in"]].shape[0], -1)
    elif op == "requant":
      r = _decode(graph, env[n["in"]], n["decode"]) * t[f"{out}.sign"]
      if n["kind"] == "dyadic":
        q = _shift_round(r * t[f"{out}.m"] + t[f"{out}.offset"], t[f"{out}.shift"], rounding)
        env[out] = np.clip(q + n["zero_point"], n["qmin"], n["qmax"])
      else:
        env[out] = _nearest_level(r * t[f"{out}.m"] + t[f"{out}.offset"], t[f"{out}.shift"],
                                  t[f"{out}.table"], rounding)
    elif op == "add":
      b = _shift_round(env[n["b"]] * t[f"{out}.m"], t[f"{out}.shift"], rounding)
      env[out], overflows[out] = _accumulator(env[n["a"]] + b, acc_bits, overflow)
    else:
      raise ValueError(op)
  return env[graph.meta["output"]], overflows, max_abs
