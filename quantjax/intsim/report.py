"""Per-layer hardware report of an integer graph: MACs, multipliers, accumulator bits, memory."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from quantjax.export import format as format_lib
from quantjax.export.graph import Graph
from quantjax.intsim.bounds import decode_weight, decoded_range, mac_bound, value_ranges


def _bits_for(magnitude: int) -> int:
  """Two's-complement bits holding every integer in [-magnitude, magnitude]."""
  return int(magnitude).bit_length() + 1


def hardware_report(graph: Graph, stats: dict[str, dict[str, int]] | None = None
                    ) -> list[dict[str, Any]]:
  """One row per conv/dense layer (per image), with the emulator's run `stats` if given.

  Columns: `macs`; `multiplier` kind and `multiplier_bits` (weight operand) × `act_bits` (input
  value operand); `acc_bits_bound` (bits for K·max|a|·max|w| + max|bias|, from the code widths
  alone) and `acc_bits_seen` (bits of the largest |sum| the run produced); `overflows`;
  `weight_bytes` (the stored fields packed to their widths, plus any level table);
  `act_bytes` (the layer's input codes per image, packed to their width).
  """
  ranges = value_ranges(graph)
  shapes = _shapes(graph)
  rows = []
  for n in graph.layers():
    out = n["out"]
    w = decode_weight(graph, n)
    lo, hi = decoded_range(graph, n, ranges)
    bias = int(np.max(np.abs(graph.tensors[f"{out}.bias"]))) if graph.tensors[
        f"{out}.bias"].size else 0
    bound = mac_bound(graph, n, ranges, w) + bias
    out_positions = int(np.prod(shapes[out][:-1]))
    k = int(np.prod(w.shape[:-1]))
    weight_bits = sum(graph.tensor_bits[name][0] * graph.tensors[name].size
                      for name in graph.tensors if name.startswith(f"{out}.w."))
    in_shape = shapes[n["in"]]
    in_lo, in_hi = ranges[n["in"]]
    code_bits = _code_bits(graph, n, in_lo, in_hi)
    row = {
        "layer": n["name"],
        "op": n["op"],
        "weight": n["weight"]["family"],
        "macs": out_positions * k * w.shape[-1],
        "multiplier": n["weight"]["multiplier"],
        "multiplier_bits": int(n["weight"]["multiplier_bits"]),
        "act_bits": int(max(abs(lo), abs(hi)).bit_length() + (1 if lo < 0 else 0)),
        "acc_bits_bound": _bits_for(bound),
        "weight_bytes": math.ceil(weight_bits / 8),
        "act_bytes": format_lib.packed_bytes(int(np.prod(in_shape)), code_bits),
        "act_code_bits": code_bits,
    }
    if stats and n["name"] in stats:
      row["acc_bits_seen"] = _bits_for(stats[n["name"]]["max_abs"])
      row["overflows"] = int(stats[n["name"]]["overflows"])
    rows.append(row)
  return rows


def _code_bits(graph: Graph, node, lo: int, hi: int) -> int:
  """Stored width of a layer's input codes (indices for tables)."""
  decode = node.get("decode")
  if decode and "table" in decode:
    return max(math.ceil(math.log2(max(graph.tensors[decode["table"]].size, 2))), 1)
  span = hi - lo
  return max(int(span).bit_length(), 1)


def _shapes(graph: Graph) -> dict[str, tuple[int, ...]]:
  """Per-image shape of every tensor (without the batch axis)."""
  shapes: dict[str, tuple[int, ...]] = {}
  for n in graph.nodes:
    op = n["op"]
    if op == "input":
      shapes[n["out"]] = tuple(n["shape"])
      continue
    s = shapes[n["in"]]
    if op == "conv":
      kh, kw, _, cout = n["kernel_shape"]
      (pt, pb), (pl, pr) = n["padding"]
      sh, sw = n["strides"]
      shapes[n["out"]] = ((s[0] + pt + pb - kh) // sh + 1, (s[1] + pl + pr - kw) // sw + 1, cout)
    elif op == "dense":
      shapes[n["out"]] = (n["kernel_shape"][-1],)
    elif op == "maxpool" and n["window"] is not None:
      (kh, kw), (sh, sw) = n["window"], n["strides"]
      shapes[n["out"]] = ((s[0] - kh) // sh + 1, (s[1] - kw) // sw + 1, s[2])
    elif op in ("maxpool", "sumpool"):
      shapes[n["out"]] = (s[-1],)
    elif op == "flatten":
      shapes[n["out"]] = (int(np.prod(s)),)
    else:
      shapes[n["out"]] = s
  return shapes


def format_report(rows: list[dict[str, Any]]) -> str:
  """The report as a Markdown table."""
  cols = ["layer", "weight", "macs", "multiplier", "multiplier_bits", "act_bits",
          "acc_bits_bound", "acc_bits_seen", "overflows", "weight_bytes", "act_bytes"]
  lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
  for r in rows:
    lines.append("| " + " | ".join(str(r.get(c, "")) for c in cols) + " |")
  total = {c: sum(r.get(c, 0) for r in rows) for c in ("macs", "weight_bytes", "act_bytes")}
  lines.append(f"| total | | {total['macs']} | | | | | | "
               f"{sum(r.get('overflows', 0) for r in rows)} | {total['weight_bytes']} | "
               f"{total['act_bytes']} |")
  return "\n".join(lines)
