"""docs/FORMAT.md against the code: its key tables, and a reader written from the page alone."""

import dataclasses
import json
import os
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from quantjax.export import export_run
from quantjax.export import format as format_lib
from quantjax.export.graph import Builder
from quantjax.intsim import emulator
from quantjax.intsim.accelerator import Accelerator
from quantjax.quantizers.codes import ActCodes, WeightCodes, encode_float, plain_codes, table_codes

DOC = os.path.join(os.path.dirname(__file__), "..", "..", "docs", "FORMAT.md")


def _doc() -> str:
  with open(DOC) as f:
    return f.read()


def _table_after(text: str, start: int) -> list[list[str]]:
  """The rows (cells stripped, header and rule dropped) of the first table after `start`."""
  rows = []
  for line in text[start:].splitlines():
    if line.startswith("|"):
      rows.append([c.strip() for c in line.strip().strip("|").split("|")])
    elif rows:
      break
  return rows[2:]


def _table(text: str, heading: str) -> list[list[str]]:
  return _table_after(text, text.index(heading))


def _names(cell: str) -> list[str]:
  """The backticked names of a cell: '`a`, `b`' -> ['a', 'b']."""
  return re.findall(r"`([^`]+)`", cell)


def _node_tables() -> dict[str, dict[str, str]]:
  """{op: {key: required}} from each '### `op`' section under '## Nodes'."""
  text = _doc()
  nodes = text[text.index("\n## Nodes") : text.index("\n## Tensor names")]
  out = {}
  for m in re.finditer(r"^### `(\w+)`$", nodes, re.M):
    rows = _table_after(nodes, m.end())
    out[m.group(1)] = {_names(r[0])[0]: r[2] for r in rows}
  return out


def _synthetic_graph():
  """A tiny graph through graph.Builder with every node kind, key variant and weight layout."""
  rng = np.random.default_rng(0)
  b = Builder(mult_bits=15, input_frac_bits=4)
  # The image is 16·p (mean 0, 4 fractional bits); a step of 32 makes every odd pixel a tie.
  u8 = ActCodes("u", "uniform", 32 / (255 * 0.3) * 2.0**-4, 8, 0, 255, 0)
  u4 = ActCodes("u", "uniform", 0.1, 4, -8, 7, -1)
  levels = ActCodes("t", "table", 0.1, 3, table=np.array([0, 1, 2, 4, 8]))
  x = b.image((4, 4, 1), [0.0], [0.3])
  x = b.requant(x, u8)  # dyadic
  w1 = rng.integers(-7, 8, (3, 3, 1, 2))
  y = b.layer(
    "conv", "c1", x, plain_codes("u", w1, np.array([0.01, 0.02]), 4), np.ones(2), (1, 1), "SAME"
  )
  y = b.batch_norm(
    y,
    {"scale": np.array([1.0, -0.5]), "bias": np.zeros(2)},
    {"mean": np.zeros(2), "var": np.ones(2)},
  )  # folded: folded_bn, sign -1
  y = b.relu(y)
  y = b.maxpool(y, (2, 2), (2, 2))
  t = b.requant(y, levels)  # threshold, read through a table
  wf = rng.choice([-12, -3, 0, 1, 2, 6, 8], (1, 1, 2, 2))  # 1 mantissa bit, with denormals
  exp, mant = encode_float(np.abs(wf), 1)
  esb = WeightCodes(
    "e",
    wf,
    np.array([0.01, 0.01]),
    {
      "sign": ((wf < 0).astype(np.int64), 1, False),
      "exponent": (exp, 3, False),
      "mantissa": (mant, 1, False),
    },
    "mantissa_shift",
    2,
    5,
    {"mantissa_bits": 1},
  )
  z1 = b.layer("conv", "c2", t, esb, None, (1, 1), "VALID")
  wt = rng.choice([-1500, 0, 3000], (1, 1, 2, 2))  # the add overflows 16 bits
  z2 = b.layer(
    "conv", "c3", t, table_codes("n", wt, np.array([0.02, 0.02]), 3, 12), None, (1, 1), "VALID"
  )
  s = b.add(z1, z2)
  b.flatten(s, 4)
  b.maxpool(s)  # global: window and strides null
  p = b.rescale(b.sumpool(s), 1.0, 4.0)
  q = b.requant(p, u4)
  d = b.layer(
    "dense", "d1", q, plain_codes("u", rng.integers(-3, 4, (2, 3)), np.full(3, 0.1), 3), np.zeros(3)
  )
  d = b.batch_norm(
    d, {"scale": np.full(3, 2.0), "bias": np.ones(3)}, {"mean": np.zeros(3), "var": np.ones(3)}
  )
  out, scale = b.logits(d)
  return b.finish(out, scale, {"model": "synthetic", "image_shape": [4, 4, 1], "num_classes": 3})


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
  graph = _synthetic_graph()
  path = str(tmp_path_factory.mktemp("synthetic") / "g")
  format_lib.save(graph, path)
  return graph, path


def test_node_tables_match_loader_and_writer(synthetic):
  graph, _ = synthetic
  tables = _node_tables()
  assert set(tables) == set(format_lib.NODE_FIELDS)
  assert {n["op"] for n in graph.nodes} == set(tables)  # the synthetic graph has every op
  for op, keys in tables.items():
    required = {k for k, r in keys.items() if r == "yes"} - {"op"}
    loader = set(format_lib.NODE_FIELDS[op])
    if op in ("conv", "dense"):
      loader |= {f"weight.{f}" for f in format_lib._WEIGHT_FIELDS}
    assert required == loader, op
    assert set(keys.values()) <= {"yes", "no", "dyadic", "threshold"}, op
  for kind, fields in format_lib._REQUANT_FIELDS.items():
    assert {k for k, r in tables["requant"].items() if r == kind} == set(fields), kind
  # Every key the writer puts in a node is documented, and every documented key is written.
  written: dict[str, set[str]] = {op: set() for op in tables}
  for n in graph.nodes:
    for k, v in n.items():
      written[n["op"]].add(k)
      if isinstance(v, dict) and k in ("weight", "target"):
        written[n["op"]] |= {f"{k}.{sub}" for sub in v}
  for op, keys in tables.items():
    assert set(keys) == written[op], op


def test_tensor_tables_match_loader_and_writer(synthetic):
  graph, path = synthetic
  text = _doc()
  with open(os.path.join(path, "graph.json")) as f:
    doc = json.load(f)
  assert [_names(r[0])[0] for r in _table(text, "Top-level keys")] == list(doc)
  index_keys = [_names(r[0])[0] for r in _table(text, "### The tensor index")]
  assert index_keys == list(format_lib.TENSOR_FIELDS)
  assert all(list(e) == index_keys for e in doc["tensors"].values())
  meta_keys = {k for r in _table(text, "`meta` (") for k in _names(r[0])}
  assert set(graph.meta) <= meta_keys
  # Tensor names per (op, requant kind): the doc's table against what the loader requires.
  documented: dict[tuple[str, str | None], set[str]] = {}
  for row in _table(text, "## Tensor names"):
    ops, qualifier = _names(row[0]), row[0].split("`")[-1].strip() or None
    for op in ops:
      documented.setdefault((op, qualifier), set()).add(_names(row[1])[0])
  needed: dict[tuple[str, str | None], set[str]] = {}
  for n in graph.nodes:
    names = set(format_lib._required_tensors(n)) - {(n.get("decode") or {}).get("table")}
    names = {re.sub(r"\.w\.\w+$", ".w.<field>", k.replace(n["out"], "<out>", 1)) for k in names}
    if names:
      needed.setdefault((n["op"], n.get("kind")), set()).update(names)
  for (op, kind), names in needed.items():
    assert names == documented.get((op, None), set()) | documented.get((op, kind), set()), op


# -- A reader written from docs/FORMAT.md alone ("tensors.bin: packing") ----------------------


def read_tensor(data: bytes, entry: dict) -> np.ndarray:
  """One tensor: value i's bit k is stream bit s = i·bits + k, bit s % 8 of byte s // 8."""
  bits, shape = entry["bits"], entry["shape"]
  count = int(np.prod(shape, dtype=np.int64))
  assert entry["nbytes"] == -(-count * bits // 8)
  raw = np.frombuffer(data, np.uint8, entry["nbytes"], entry["offset"]).astype(np.int64)
  s = np.arange(count, dtype=np.int64)[:, None] * bits + np.arange(bits, dtype=np.int64)[None, :]
  stream = (raw[s // 8] >> (s % 8)) & 1  # [count, bits], column k = bit k of each value
  values = [sum(int(bit) << k for k, bit in enumerate(row) if bit) for row in stream]
  if entry["signed"]:
    values = [u - (1 << bits) if u >= 1 << (bits - 1) else u for u in values]
  return np.array(values, dtype=np.int64).reshape(shape)


def read_export(path: str) -> dict[str, np.ndarray]:
  with open(os.path.join(path, "graph.json")) as f:
    doc = json.load(f)
  assert (doc["format"], doc["version"]) == ("quantjax-int", 2)
  with open(os.path.join(path, "tensors.bin"), "rb") as f:
    data = f.read()
  # Back to back in name order from byte 0, nothing after the last one.
  end = 0
  for name in sorted(doc["tensors"]):
    assert doc["tensors"][name]["offset"] == end, name
    end += doc["tensors"][name]["nbytes"]
  assert end == len(data)
  return {name: read_tensor(data, e) for name, e in doc["tensors"].items()}


def test_doc_packing_examples():
  # "3-bit signed [1, -1, 2] ... bytes 0xB9 0x00; 4-bit unsigned [3, 12] is the byte 0xC3".
  entry = {"shape": [3], "bits": 3, "signed": True, "offset": 0, "nbytes": 2}
  np.testing.assert_array_equal(read_tensor(bytes([0xB9, 0x00]), entry), [1, -1, 2])
  entry = {"shape": [2], "bits": 4, "signed": False, "offset": 0, "nbytes": 1}
  np.testing.assert_array_equal(read_tensor(bytes([0xC3]), entry), [3, 12])
  assert "`0xB9 0x00`" in _doc() and "`0xC3`" in _doc()


def _assert_reads_like_load(path):
  loaded = format_lib.load(path)
  mine = read_export(path)
  assert set(mine) == set(loaded.tensors)
  for name, arr in loaded.tensors.items():
    np.testing.assert_array_equal(mine[name], arr, err_msg=name)
  return loaded


def test_independent_reader_synthetic(synthetic):
  graph, path = synthetic
  loaded = _assert_reads_like_load(path)
  widths = {b for b, _ in loaded.tensor_bits.values()}
  assert {1, 2, 3, 7, 16, 32, 64} <= widths  # odd widths, a 64-bit offset
  assert any(np.any(a < 0) for a in loaded.tensors.values())
  for name, arr in graph.tensors.items():
    np.testing.assert_array_equal(loaded.tensors[name], arr)


def test_independent_reader_exported_lenet(quantized_run, tmp_path):
  exp, variables, _, _ = quantized_run("lenet5", "nuuq")
  path = str(tmp_path / "g")
  format_lib.save(export_run(exp, variables), path)
  _assert_reads_like_load(path)


@pytest.mark.parametrize(
  "rounding,expected",
  [
    ("floor", [-3, 2, 1, -2, 0]),
    ("half_up", [-2, 3, 2, -1, 0]),  # ties toward +infinity
    ("half_even", [-2, 2, 2, -2, 0]),
  ],
)
def test_documented_rounding_is_the_emulators(rounding, expected):
  # t / 2 for t = -5, 5, 3, -3 (ties) and t = 1 >> 2 (0.25).
  with jax.enable_x64(True):
    t = jnp.array([-5, 5, 3, -3, 1], jnp.int64)
    shift = jnp.array([1, 1, 1, 1, 2], jnp.int64)
    got = np.asarray(emulator._round_shift(t, shift, rounding))
  np.testing.assert_array_equal(got, expected)
  # The doc's worked ties: -2.5 -> -2 under both round-to-nearest modes, 2.5 -> 3 / 2.
  text = _doc()
  assert "ties toward +infinity (`-2.5 -> -2`" in text and "`2.5 -> 3`" in text
  assert "ties to the even integer (`-2.5 -> -2`, `1.5 -> 2`, `2.5 -> 2`)" in text


# -- Each op's arithmetic as docs/FORMAT.md states it, against the emulator --------------------


def _round_s(t, s, mode):
  q = t >> s
  rem = t - (q << s)
  half = np.where(s > 0, np.left_shift(1, np.maximum(s - 1, 0)), 0)
  if mode == "floor":
    return q
  if mode == "half_up":
    return q + ((s > 0) & (rem >= half))
  return q + ((s > 0) & ((rem > half) | ((rem == half) & (q % 2 == 1))))


def _acc(s, acc_bits, overflow):
  lo, hi = -(2 ** (acc_bits - 1)), 2 ** (acc_bits - 1) - 1
  if overflow == "saturate":
    return np.clip(s, lo, hi)
  return ((s + 2 ** (acc_bits - 1)) % 2**acc_bits) - 2 ** (acc_bits - 1)


def _weights(t, n):
  """The doc's weight layout table."""
  f = {k: t[f"{n['out']}.w.{k}"] for k in n["weight"]["fields"]}
  pm = lambda mag: np.where(f["sign"] == 1, -mag, mag)  # noqa: E731
  fields = tuple(n["weight"]["fields"])
  if fields == ("codes",):
    return f["codes"]
  if fields == ("index", "table"):
    return f["table"][f["index"]]
  if fields == ("mantissa", "sign"):
    return pm(2 * f["mantissa"] + 1)
  if fields == ("exponent", "mantissa", "sign"):
    big = (2 ** n["weight"]["meta"]["mantissa_bits"] + f["mantissa"]) << np.maximum(
      f["exponent"] - 1, 0
    )
    return pm(np.where(f["exponent"] == 0, f["mantissa"], big))
  assert fields == ("exponent", "sign"), fields
  return pm(np.where(f["exponent"] == 0, 0, 1 << np.maximum(f["exponent"] - 1, 0)))


def _level_index(v, shift, table, rounding):
  """The doc's `threshold` rule, compared exactly in Python integers (object arrays)."""
  v2, big = 2 * v.astype(object), np.left_shift(np.ones_like(shift, dtype=object), shift)
  index = np.zeros(v.shape, np.int64)
  for j in range(len(table) - 1):
    lo, hi = int(table[j]), int(table[j + 1])
    if rounding == "half_up":
      index += v2 >= (lo + hi) * big
    elif rounding == "half_even":
      index += (v2 > (lo + hi) * big) | ((v2 == (lo + hi) * big) & ((j + 1) % 2 == 0))
    else:
      index += v.astype(object) >= hi * big
  return index


def run_from_doc(t, doc, images, acc_bits, overflow, rounding, output=None):
  """The graph's output, each op as docs/FORMAT.md's "Nodes" section states it (int64)."""
  env = {}
  for n in doc["nodes"]:
    op, out = n["op"], n["out"]
    c = lambda k, out=out: t[f"{out}.{k}"]  # noqa: E731
    dec = n.get("decode")
    x = env.get(n.get("in"))
    if dec is not None:
      x = t[dec["table"]][x] if "table" in dec else x - dec["zero_point"]
    if op == "input":
      env[out] = images.astype(np.int64) * c("mul") - c("offset")
    elif op == "conv":
      w = _weights(t, n)
      (pt, pb), (pl, pr) = n["padding"]
      x = np.pad(x, ((0, 0), (pt, pb), (pl, pr), (0, 0)))
      (kh, kw), (sh, sw) = w.shape[:2], n["strides"]
      ho, wo = (x.shape[1] - kh) // sh + 1, (x.shape[2] - kw) // sw + 1
      y = np.zeros((x.shape[0], ho, wo, w.shape[-1]), np.int64)
      for i in range(ho):
        for j in range(wo):
          patch = x[:, i * sh : i * sh + kh, j * sw : j * sw + kw, :]
          y[:, i, j] = np.tensordot(patch, w, axes=([1, 2, 3], [0, 1, 2]))
      env[out] = _acc(c("sign") * y + c("bias"), acc_bits, overflow)
    elif op == "dense":
      env[out] = _acc(c("sign") * (x @ _weights(t, n)) + c("bias"), acc_bits, overflow)
    elif op == "relu":
      env[out] = np.maximum(x, n["zero"])
    elif op == "maxpool" and n["window"] is None:
      env[out] = x.max(axis=(1, 2))
    elif op == "maxpool":
      (kh, kw), (sh, sw) = n["window"], n["strides"]
      ho, wo = (x.shape[1] - kh) // sh + 1, (x.shape[2] - kw) // sw + 1
      env[out] = np.stack(
        [
          np.stack(
            [x[:, i * sh : i * sh + kh, j * sw : j * sw + kw].max(axis=(1, 2)) for j in range(wo)],
            1,
          )
          for i in range(ho)
        ],
        1,
      )
    elif op == "sumpool":
      env[out] = x.sum(axis=(1, 2))
    elif op == "flatten":
      env[out] = x.reshape(x.shape[0], -1)
    elif op == "requant":
      r = c("sign") * x
      v = r * c("m") + c("offset")
      if n["kind"] == "dyadic":
        q = _round_s(v, c("shift"), rounding)
        env[out] = np.clip(q + n["zero_point"], n["qmin"], n["qmax"])
      else:
        env[out] = _level_index(v, c("shift"), c("table"), rounding)
    elif op == "add":
      b = _round_s(env[n["b"]] * c("m"), c("shift"), rounding)
      env[out] = _acc(env[n["a"]] + b, acc_bits, overflow)
  return env[output or doc["meta"]["output"]]


@pytest.mark.parametrize(
  "acc_bits,overflow,rounding",
  [(32, "saturate", "half_even"), (16, "saturate", "half_up"), (16, "wrap", "floor")],
)
def test_doc_arithmetic_matches_emulator(synthetic, acc_bits, overflow, rounding):
  """The doc's arithmetic, read from the doc's packing, gives the emulator's integers.

  Checked at the first conv (its input requant sits on ties, so the three modes differ), at the
  residual add (which overflows 16 bits where its inputs do not: its own saturate or wrap) and, at
  32 bits, at the logits (through sumpool, requant and dense).
  """
  _, path = synthetic
  with open(os.path.join(path, "graph.json")) as f:
    doc = json.load(f)
  tensors = read_export(path)
  graph = format_lib.load(path)
  images = np.random.default_rng(1).integers(0, 256, (8, 4, 4, 1), dtype=np.uint8)
  accel = Accelerator(acc_bits=acc_bits, overflow=overflow, rounding=rounding)
  first = {n["op"]: n["out"] for n in reversed(graph.nodes)}
  outputs = [first["conv"], first["add"]] + ([graph.meta["output"]] if acc_bits == 32 else [])
  for output in outputs:
    at = dataclasses.replace(graph, meta=dict(graph.meta, output=output))
    want, _ = emulator.Emulator(at, accel)(images)
    got = run_from_doc(tensors, doc, images, acc_bits, overflow, rounding, output)
    np.testing.assert_array_equal(got, want, err_msg=output)
