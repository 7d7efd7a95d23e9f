"""What the graph's integers can be: decoded ranges and the MAC bound, against brute force."""

import itertools
import types

import numpy as np
import pytest

from quantjax.export import export_run
from quantjax.intsim.bounds import decoded_range, mac_bound, value_ranges


def _true_max_abs(w, lo, hi):
  """max over every input in [lo, hi]^K of |Σ a·w| per output channel: a linear function of a
  takes its extremes at the corners, so the corners are enough."""
  k = w.reshape(-1, w.shape[-1])
  corners = np.array(list(itertools.product((lo, hi), repeat=k.shape[0])))
  return np.max(np.abs(corners @ k), axis=0)


@pytest.mark.parametrize("lo,hi", [(-7, 7), (0, 255), (-128, 127)])
def test_mac_bound_covers_every_input_and_is_tight_when_symmetric(lo, hi):
  w = np.array([[[3, -1]], [[-4, 2]], [[0, 5]]])  # K = 3 products, 2 output channels
  node = {"in": "x", "decode": None}
  bound = mac_bound(None, node, {"x": (lo, hi)}, w)
  true = _true_max_abs(w, lo, hi)
  assert bound == max(abs(lo), abs(hi)) * 8  # channel 0: |3|+|-4|+|0| = 7; channel 1: |-1|+|2|+|5|
  assert bound >= int(np.max(true))
  if lo == -hi:
    assert bound == int(np.max(true))


def test_decoded_range_by_decode():
  graph = types.SimpleNamespace(tensors={"t": np.array([-9, 0, 4, 30])})
  ranges = {"x": (0, 15)}
  assert decoded_range(graph, {"in": "x", "decode": None}, ranges) == (0, 15)
  assert decoded_range(graph, {"in": "x", "decode": {"zero_point": 3}}, ranges) == (-3, 12)
  assert decoded_range(graph, {"in": "x", "decode": {"table": "t"}}, ranges) == (-9, 30)


def test_value_ranges_of_an_exported_lenet(quantized_run):
  exp, variables, _, _ = quantized_run("lenet5", "uniform8")
  graph = export_run(exp, variables)
  ranges = value_ranges(graph)
  t = graph.tensors
  for n in graph.nodes:
    if n["op"] == "input":  # the uint8 image times its multiplier, less the offset
      mul, off = t[f"{n['out']}.mul"], t[f"{n['out']}.offset"]
      assert ranges[n["out"]] == (int(np.min(-off)), int(np.max(255 * mul - off)))
    elif n["op"] == "requant" and n["kind"] == "dyadic":
      assert ranges[n["out"]] == (n["qmin"], n["qmax"])
  # Unsigned 8-bit activations (0..255) feed the second layer.
  assert decoded_range(graph, graph.layers()[1], ranges) == (0, 255)
