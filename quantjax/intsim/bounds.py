"""What an exported integer graph's integers can be: each layer's decoded weights, the range of
every tensor's values from the code widths alone, and the bound on a layer's sums that picks its
MAC path (`quantjax.intsim.emulator`) and the exports' accumulator types (`quantjax.export`)."""

from __future__ import annotations

from typing import Any

import numpy as np

from quantjax.export.graph import Graph
from quantjax.quantizers.codes import WeightCodes


def decode_weight(graph: Graph, node: dict[str, Any]) -> np.ndarray:
  """The integer weight values (int64, kernel shape) from a layer's stored fields.

  The one decode rule of the quantizer contract (`WeightCodes.decode`), whatever the quantizer.
  """
  w = node["weight"]
  fields = {name: np.asarray(graph.tensors[f"{node['out']}.w.{name}"], np.int64).reshape(-1)
            for name in w["fields"]}
  try:
    values = WeightCodes.decode(fields, w["meta"])
  except ValueError as e:
    raise ValueError(f"layer {node.get('name')!r}: {e}") from None
  return np.asarray(values, np.int64).reshape(tuple(node["kernel_shape"]))


def value_ranges(graph: Graph) -> dict[str, tuple[int, int]]:
  """The [min, max] integer value each tensor can hold, from the code widths alone."""
  ranges: dict[str, tuple[int, int]] = {}
  t = graph.tensors
  for n in graph.nodes:
    op = n["op"]
    if op == "input":
      mul, off = t[f"{n['out']}.mul"], t[f"{n['out']}.offset"]
      ranges[n["out"]] = (int(np.min(-off)), int(np.max(255 * mul - off)))
    elif op in ("conv", "dense"):
      ranges[n["out"]] = (-(2**31), 2**31 - 1)
    elif op == "requant":
      if n["kind"] == "dyadic":
        ranges[n["out"]] = (int(n["qmin"]), int(n["qmax"]))
      else:
        ranges[n["out"]] = (0, int(n["num_levels"]) - 1)
    elif op == "sumpool":
      lo, hi = ranges[n["in"]]
      ranges[n["out"]] = (lo * n["count"], hi * n["count"])
    elif op == "add":
      ranges[n["out"]] = (-(2**31), 2**31 - 1)
    else:
      ranges[n["out"]] = ranges[n["in"]]
  return ranges


def decoded_range(graph: Graph, node: dict[str, Any], ranges) -> tuple[int, int]:
  """The integer values a node reads after decoding its input's codes."""
  decode = node.get("decode")
  if decode is None:
    return ranges[node["in"]]
  if "table" in decode:
    table = graph.tensors[decode["table"]]
    return int(table.min()), int(table.max())
  lo, hi = ranges[node["in"]]
  return lo - decode["zero_point"], hi - decode["zero_point"]


def mac_bound(graph: Graph, node: dict[str, Any], ranges, weights: np.ndarray) -> int:
  """max |Σ a·w| over all inputs the code widths allow: K·max|a|·max|w| (per output channel)."""
  lo, hi = decoded_range(graph, node, ranges)
  amax = max(abs(lo), abs(hi))
  per_channel = np.sum(np.abs(weights.reshape(-1, weights.shape[-1])), axis=0)
  return int(np.max(per_channel)) * amax
