"""The packed on-disk format: exact packing, round trip, and one-line errors on bad files."""

import dataclasses
import json
import math
import os

import numpy as np
import pytest

from quantjax.export import export_run
from quantjax.export import format as format_lib
from quantjax.export.codes import esb_decode, esb_encode
from quantjax.export.rescale import THRESHOLD_LIMIT, dyadic, level_thresholds


def test_pack_hand_worked():
  # 3-bit signed [1, -1, 2], each LSB first: 1,0,0 | 1,1,1 | 0,1,0 -> byte 0 = bits 1,0,0,1,1,1,0,1
  # (LSB first) = 0b10111001, byte 1 = bit 0 of the stream's 9th bit = 0.
  assert format_lib.pack(np.array([1, -1, 2]), 3, True) == bytes([0b10111001, 0])
  np.testing.assert_array_equal(format_lib.unpack(bytes([0b10111001, 0]), 3, 3, True), [1, -1, 2])
  # 4-bit unsigned indices: two per byte.
  assert format_lib.pack(np.array([3, 12]), 4, False) == bytes([0xC3])
  with pytest.raises(ValueError, match="do not fit 3 signed bits"):
    format_lib.pack(np.array([4]), 3, True)


def test_esb_fields_and_rescale_hand_worked():
  # b=4, k=2 levels {0.5, 1, 1.5, 2, 3, 4, 6}·α: v = 2q = {1, 2, 3, 4, 6, 8, 12}.
  v = np.array([1, 2, 3, 4, 6, 8, 12])
  f, m = esb_encode(v, 1)
  np.testing.assert_array_equal(f, [0, 1, 1, 2, 2, 3, 3])
  np.testing.assert_array_equal(m, [1, 0, 1, 0, 1, 0, 1])
  np.testing.assert_array_equal(esb_decode(f, m, 1), v)
  mult, shift, o = dyadic(np.array([0.75]), np.array([0.5]), mult_bits=8)
  assert (int(mult[0]), int(shift[0]), int(o[0])) == (192, 8, 128)
  # Levels {0, 1, 2} at multiplier 0.5 (m = 128, shift 8): boundaries at real 0.5 and 1.5 -> r = 1
  # and 3.
  mult, shift, o = dyadic(np.array([0.5]), np.array([0.0]), mult_bits=8)
  assert (int(mult[0]), int(shift[0]), int(o[0])) == (128, 8, 0)
  th = {mode: level_thresholds(mult, shift, o, [0, 1, 2], mode)
        for mode in ("half_up", "half_even", "floor")}
  np.testing.assert_array_equal(th["half_up"], [[1, 3]])
  np.testing.assert_array_equal(th["half_even"], [[2, 3]])  # r=1 -> 0.5: tie goes to level 0
  np.testing.assert_array_equal(th["floor"], [[2, 4]])
  # An offset of 1/4 (o = 64) moves every boundary by -1/2 in r; a negative level table, and
  # m = 0 (the value is o·2^-shift for every r: each boundary is passed by every r or by none).
  th = level_thresholds(mult, shift, np.array([64]), [-2, 0, 1, 2], "half_even")
  np.testing.assert_array_equal(th, [[-2, 1, 3]])  # boundaries at r = -2.5, 0.5, 2.5
  th = level_thresholds([0, 0], [8, 8], [64, -192], [-1, 0, 1], "half_up")  # 1/4, -3/4
  np.testing.assert_array_equal(th, [[-THRESHOLD_LIMIT, THRESHOLD_LIMIT],
                                     [THRESHOLD_LIMIT, THRESHOLD_LIMIT]])


def test_round_trip_and_validation(quantized_run, tmp_path):
  exp, variables, _, _ = quantized_run("lenet5", "nuuq")
  graph = export_run(exp, variables)
  path = str(tmp_path / "g")
  format_lib.save(graph, path)
  loaded = format_lib.load(path)
  assert set(loaded.tensors) == set(graph.tensors)
  for name, arr in graph.tensors.items():
    np.testing.assert_array_equal(loaded.tensors[name], arr)
  # The 5-level NUUQ index is packed at 3 bits per weight.
  index = [k for k in graph.tensors if k.endswith(".w.index")][0]
  doc = json.load(open(os.path.join(path, "graph.json")))
  assert doc["tensors"][index]["bits"] == 3
  assert doc["tensors"][index]["nbytes"] == -(-graph.tensors[index].size * 3 // 8)

  def broken(edit):
    d = json.loads(json.dumps(doc))
    edit(d)
    with open(os.path.join(path, "graph.json"), "w") as f:
      json.dump(d, f)

  broken(lambda d: d.update(version=99))
  with pytest.raises(ValueError, match="format version 99 is not supported"):
    format_lib.load(path)
  broken(lambda d: d["tensors"].pop(index))
  with pytest.raises(ValueError, match=f"tensor '{index}' .* is missing"):
    format_lib.load(path)
  bias = index.replace(".w.index", ".bias")
  broken(lambda d: d["tensors"][bias].update(shape=[3, 1]))
  with pytest.raises(ValueError, match="cannot hold|has shape"):
    format_lib.load(path)
  broken(lambda d: d["tensors"][bias].pop("offset"))
  with pytest.raises(ValueError, match="malformed entry .*'offset'"):
    format_lib.load(path)
  broken(lambda d: d["nodes"][1].pop("op"))
  with pytest.raises(ValueError, match="malformed entry"):
    format_lib.load(path)
  broken(lambda d: None)
  with open(os.path.join(path, "tensors.bin"), "r+b") as f:
    f.truncate(100)
  with pytest.raises(ValueError, match="is truncated"):
    format_lib.load(path)
  with pytest.raises(ValueError, match="not an exported integer graph"):
    format_lib.load(str(tmp_path))


def _saved(quantized_run, tmp_path):
  """A saved LeNet-5 export: (graph, path, graph.json as a dict)."""
  exp, variables, _, _ = quantized_run("lenet5", "nuuq")
  graph = export_run(exp, variables)
  path = str(tmp_path / "g")
  format_lib.save(graph, path)
  with open(os.path.join(path, "graph.json")) as f:
    return graph, path, json.load(f)


def _write_json(path, doc):
  with open(os.path.join(path, "graph.json"), "w") as f:
    json.dump(doc, f)


def test_load_rejects_unknown_op_and_missing_field(quantized_run, tmp_path):
  _, path, doc = _saved(quantized_run, tmp_path)
  conv = next(i for i, n in enumerate(doc["nodes"]) if n["op"] == "conv")
  bad = json.loads(json.dumps(doc))
  bad["nodes"][conv]["op"] = "depthwise_conv"
  _write_json(path, bad)
  with pytest.raises(ValueError, match=f"node {conv} has op 'depthwise_conv'; known ops: input"):
    format_lib.load(path)
  bad = json.loads(json.dumps(doc))
  del bad["nodes"][conv]["padding"]
  _write_json(path, bad)
  with pytest.raises(ValueError, match=rf"node {conv} \(conv\) lacks 'padding'"):
    format_lib.load(path)
  bad = json.loads(json.dumps(doc))
  del bad["nodes"][conv]["weight"]["meta"]
  _write_json(path, bad)
  with pytest.raises(ValueError, match=r"lacks 'weight.meta'"):
    format_lib.load(path)
  bad = json.loads(json.dumps(doc))
  name = sorted(bad["tensors"])[0]
  del bad["tensors"][name]["nbytes"]
  _write_json(path, bad)
  with pytest.raises(ValueError, match=rf"malformed entry \(tensor '{name}' lacks 'nbytes'\)"):
    format_lib.load(path)


@pytest.mark.parametrize("shift,bits", [(63, (7, False)), (-1, (8, True))])
def test_load_rejects_out_of_range_shift(quantized_run, tmp_path, shift, bits):
  graph, path, _ = _saved(quantized_run, tmp_path)
  name = next(k for k in graph.tensors if k.endswith(".shift"))
  graph.tensors[name] = graph.tensors[name].copy()
  graph.tensors[name][0] = shift
  graph.tensor_bits[name] = bits
  format_lib.save(graph, path)
  with pytest.raises(ValueError, match=rf"tensor '{name}' .* has shifts in \[.*{shift}.*\], "
                     r"outside \[0, 62\]") as e:
    format_lib.load(path)
  assert "\n" not in str(e.value)


def test_load_rejects_trailing_bytes(quantized_run, tmp_path):
  _, path, _ = _saved(quantized_run, tmp_path)
  size = os.path.getsize(os.path.join(path, "tensors.bin"))
  with open(os.path.join(path, "tensors.bin"), "ab") as f:
    f.write(b"\0\0\0")
  with pytest.raises(ValueError, match=f"has 3 trailing bytes after the last tensor \\(which ends "
                     f"at byte {size}\\)"):
    format_lib.load(path)


def test_each_tensor_is_stored_once(quantized_run, tmp_path):
  """Version 2: a threshold requant stores m, shift, offset and its levels, not thresholds per
  rounding mode; its consumers decode with that one table; a version-1 export is refused."""
  exp, variables, _, _ = quantized_run("lenet5", "esb")
  graph = export_run(exp, variables)
  path = str(tmp_path / "g")
  format_lib.save(graph, path)
  threshold = [n for n in graph.nodes if n["op"] == "requant" and n["kind"] == "threshold"]
  assert threshold and not any(".thresholds" in name for name in graph.tensors)
  tables = {f"{n['out']}.table" for n in threshold}
  assert {name for name in graph.tensors if name.endswith(".table")} == tables
  decoded = {n["decode"]["table"] for n in graph.nodes if "table" in (n.get("decode") or {})}
  assert decoded == tables  # every table is read, through the name its requant gave it
  for n in threshold:
    channels = graph.tensors[f"{n['out']}.m"].size
    stored = sum(math.ceil(graph.tensors[name].size * graph.tensor_bits[name][0] / 8)
                 for name in graph.tensors if name.startswith(n["out"] + "."))
    # sign, m, shift, offset per channel and one table: version 1 spent 3·42·C·J bits instead.
    assert stored <= channels * (2 + 32 + 7 + 64) / 8 + 4 + n["num_levels"] * 8
    assert 3 * 42 * channels * (n["num_levels"] - 1) / 8 > 10 * stored
  with open(os.path.join(path, "graph.json")) as f:
    doc = json.load(f)
  doc["version"] = 1
  _write_json(path, doc)
  with pytest.raises(ValueError, match=r"format version 1 is not supported; this quantjax reads "
                     r"version 2 \(re-export the model with it"):
    format_lib.load(path)


def test_load_rejects_a_negative_multiplier_and_unordered_levels(quantized_run, tmp_path):
  exp, variables, _, _ = quantized_run("lenet5", "esb")
  graph = export_run(exp, variables)
  out = next(n["out"] for n in graph.nodes if n["op"] == "requant" and n["kind"] == "threshold")
  for name, edit, message in [
      (f"{out}.m", lambda a: a * np.where(np.arange(a.size) == 0, -1, 1), "negative multiplier"),
      (f"{out}.table", lambda a: a[::-1], "not strictly ascending")]:
    bad = dataclasses.replace(graph, tensors={**graph.tensors, name: edit(graph.tensors[name])})
    path = str(tmp_path / name)
    format_lib.save(bad, path)
    with pytest.raises(ValueError, match=message):
      format_lib.load(path)
