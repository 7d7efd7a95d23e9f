"""The on-disk format of an integer graph: a directory with `graph.json` and `tensors.bin`.

`graph.json` holds `format` ('quantjax-int'), `version`, the graph's meta and nodes, and a tensor
index: per tensor its shape, stored bit width, signedness, byte offset and byte length in
`tensors.bin`. Each tensor is packed to its real width, `bits` per value, little-endian bit order
(two's complement for signed values), so a 4-bit index takes half a byte and a 3-bit one 3/8.
`manifest.json`, written last, holds both files' SHA-256 checksums. `load` validates everything
before returning: the format name and version, every node (its op known, its fields present, its
inputs made by an earlier node), every tensor a node needs, shapes against the nodes, shifts in
[0, 62], multipliers >= 0, ascending level tables, the data file's length (no bytes missing, none
trailing), and the checksums; each problem is a one-line ValueError. An export made before
manifests existed is read with a one-line note. The schema and each op's integer arithmetic are
written out in docs/FORMAT.md.
"""

from __future__ import annotations

import json
import math
import os

import numpy as np
from absl import logging

from quantjax.export.graph import FORMAT_VERSION, Graph
from quantjax.export.rescale import MAX_SHIFT
from quantjax.workdir import manifest

FORMAT_NAME = "quantjax-int"
GRAPH_FILE = "graph.json"
DATA_FILE = "tensors.bin"


def pack(values: np.ndarray, bits: int, signed: bool) -> bytes:
  """`values` as `bits`-wide fields, little-endian bit order, padded to a whole byte."""
  v = np.asarray(values, np.int64).reshape(-1)
  lo, hi = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)
  if v.size and (v.min() < lo or v.max() > hi):
    raise ValueError(f"values in [{v.min()}, {v.max()}] do not fit {bits} "
                     f"{'signed' if signed else 'unsigned'} bits")
  u = (v & ((1 << bits) - 1)).astype(np.uint64) if bits < 64 else v.view(np.uint64)
  planes = ((u[:, None] >> np.arange(bits, dtype=np.uint64)[None, :]) & np.uint64(1))
  return np.packbits(planes.astype(np.uint8).reshape(-1), bitorder="little").tobytes()


def unpack(data: bytes, count: int, bits: int, signed: bool) -> np.ndarray:
  """Inverse of `pack`: `count` int64 values."""
  flat = np.unpackbits(np.frombuffer(data, np.uint8), bitorder="little")[: count * bits]
  planes = flat.reshape(count, bits).astype(np.uint64)
  u = np.sum(planes << np.arange(bits, dtype=np.uint64)[None, :], axis=1, dtype=np.uint64)
  v = u.view(np.int64) if bits == 64 else u.astype(np.int64)
  if signed and bits < 64:
    v = np.where(v >= 2 ** (bits - 1), v - (1 << bits), v)
  return v


def packed_bytes(count: int, bits: int) -> int:
  return math.ceil(count * bits / 8)


def save(graph: Graph, path: str) -> None:
  """Writes `graph` to the directory `path` (created; existing files there are replaced).

  The manifest goes last, and an old one first: an export cut short has none that matches.
  """
  if os.path.exists(path) and not os.path.isdir(path):
    raise ValueError(f"{path!r} is a file; the export is a directory (give a new path)")
  try:
    os.makedirs(path, exist_ok=True)
  except OSError as e:
    raise ValueError(f"cannot create {path!r}: {e.strerror or e}") from None
  if manifest.has_manifest(path):
    os.remove(os.path.join(path, manifest.MANIFEST))
  index = {}
  chunks = []
  offset = 0
  for name in sorted(graph.tensors):
    arr = graph.tensors[name]
    bits, signed = graph.tensor_bits[name]
    blob = pack(arr, bits, signed)
    index[name] = {"shape": list(arr.shape), "bits": bits, "signed": signed, "offset": offset,
                   "nbytes": len(blob)}
    chunks.append(blob)
    offset += len(blob)
  doc = {"format": FORMAT_NAME, "version": FORMAT_VERSION, "meta": graph.meta,
         "nodes": graph.nodes, "tensors": index}
  tmp = os.path.join(path, DATA_FILE + ".tmp")
  with open(tmp, "wb") as f:
    for blob in chunks:
      f.write(blob)
  os.replace(tmp, os.path.join(path, DATA_FILE))
  tmp = os.path.join(path, GRAPH_FILE + ".tmp")
  with open(tmp, "w") as f:
    json.dump(doc, f, indent=1)
  os.replace(tmp, os.path.join(path, GRAPH_FILE))
  manifest.write(path, [GRAPH_FILE, DATA_FILE])


def _required_tensors(node: dict) -> dict[str, tuple[int, ...] | None]:
  """Tensor names a node needs, with the shape each must have (None: any)."""
  out = node["out"]
  op = node["op"]
  need: dict[str, tuple[int, ...] | None] = {}
  if op == "input":
    c = node["shape"][-1]
    need = {f"{out}.mul": (c,), f"{out}.offset": (c,)}
  elif op in ("conv", "dense"):
    shape = tuple(node["kernel_shape"])
    cout = shape[-1]
    for field in node["weight"]["fields"]:
      need[f"{out}.w.{field}"] = None if field == "table" else shape
    need[f"{out}.bias"] = (cout,)
    need[f"{out}.sign"] = (cout,)
  elif op == "requant":
    need.update({f"{out}.sign": None, f"{out}.m": None, f"{out}.shift": None,
                 f"{out}.offset": None})
    if node["kind"] == "threshold":
      need[f"{out}.table"] = (int(node["num_levels"]),)
  elif op == "add":
    need = {f"{out}.m": None, f"{out}.shift": None}
  decode = node.get("decode")
  if decode and "table" in decode:
    need[decode["table"]] = None
  return need


def load(path: str) -> Graph:
  """Reads and validates a graph written by `save`; raises a one-line ValueError on any problem."""
  graph_file = os.path.join(path, GRAPH_FILE)
  data_file = os.path.join(path, DATA_FILE)
  for f in (graph_file, data_file):
    if not os.path.isfile(f):
      raise ValueError(f"{path!r} is not an exported integer graph: {os.path.basename(f)} missing")
  try:
    with open(graph_file) as f:
      doc = json.load(f)
  except json.JSONDecodeError as e:
    raise ValueError(f"{graph_file}: not valid JSON ({e.msg} at line {e.lineno})") from None
  if not isinstance(doc, dict) or doc.get("format") != FORMAT_NAME:
    found = doc.get("format") if isinstance(doc, dict) else None
    raise ValueError(f"{graph_file}: format {found!r} is not {FORMAT_NAME!r}")
  if doc.get("version") != FORMAT_VERSION:
    older = isinstance(doc.get("version"), int) and doc["version"] < FORMAT_VERSION
    raise ValueError(f"{graph_file}: format version {doc.get('version')!r} is not supported; "
                     f"this quantjax reads version {FORMAT_VERSION} (re-export the model"
                     f"{' with it: docs/FORMAT.md lists what changed' if older else ''})")
  for key in ("meta", "nodes", "tensors"):
    if key not in doc:
      raise ValueError(f"{graph_file}: missing {key!r}")
  _check_nodes(doc["nodes"], graph_file)
  with open(data_file, "rb") as f:
    data = f.read()
  try:
    graph = _parse(doc, data, graph_file, data_file)
  except (KeyError, TypeError, AttributeError) as e:  # a malformed entry in graph.json
    raise ValueError(f"{graph_file}: malformed entry ({type(e).__name__}: {e}); re-export "
                     "the model") from None
  if manifest.has_manifest(path):
    problem = manifest.check(path)
    if problem:
      raise ValueError(f"export {path!r} is damaged: {problem}; re-export the model")
  else:
    logging.info("export %s has no %s (made before checksums); read unchecked", path,
                 manifest.MANIFEST)
  return graph


# The fields every node of an op needs (what the emulator and the reports read).
NODE_FIELDS = {
    "input": ("out", "shape"),
    "conv": ("name", "in", "out", "decode", "kernel_shape", "weight", "strides", "padding"),
    "dense": ("name", "in", "out", "decode", "kernel_shape", "weight"),
    "relu": ("in", "out", "zero"),
    "maxpool": ("in", "out", "window", "strides"),
    "sumpool": ("in", "out", "count"),
    "flatten": ("in", "out"),
    "requant": ("in", "out", "decode", "kind"),
    "add": ("a", "b", "in", "out"),
}
_REQUANT_FIELDS = {"dyadic": ("qmin", "qmax", "zero_point"), "threshold": ("num_levels",)}
_WEIGHT_FIELDS = ("family", "fields", "meta")


def _check_nodes(nodes, graph_file: str) -> None:
  """Every node: a known op, the fields it needs, inputs made by an earlier node (one line)."""
  if not isinstance(nodes, list) or not nodes:
    raise ValueError(f"{graph_file}: malformed entry: 'nodes' must be a non-empty list")
  made: set[str] = set()
  for i, node in enumerate(nodes):
    where = f"{graph_file}: malformed entry: node {i}"
    if not isinstance(node, dict):
      raise ValueError(f"{where} is not an object; re-export the model")
    op = node.get("op")
    if op not in NODE_FIELDS:
      raise ValueError(f"{where} has op {op!r}; known ops: {', '.join(NODE_FIELDS)}")
    required = NODE_FIELDS[op] + _REQUANT_FIELDS.get(node.get("kind"), ())
    if op == "requant" and node.get("kind") not in _REQUANT_FIELDS:
      raise ValueError(f"{where} (requant) has kind {node.get('kind')!r}; known kinds: "
                       f"{', '.join(_REQUANT_FIELDS)}")
    missing = [f for f in required if f not in node]
    if op in ("conv", "dense") and isinstance(node.get("weight"), dict):
      missing += [f"weight.{f}" for f in _WEIGHT_FIELDS if f not in node["weight"]]
    if missing:
      raise ValueError(f"{where} ({op}) lacks {', '.join(repr(f) for f in missing)}; re-export "
                       "the model")
    if not isinstance(node["out"], str) or node["out"] in made:
      raise ValueError(f"{where} ({op}) has output {node['out']!r}, not a new name")
    for ref in ("in", "a", "b"):
      if ref in node and op != "input" and node[ref] not in made:
        raise ValueError(f"{where} ({op} {node['out']!r}) reads {node[ref]!r}, which no earlier "
                         "node makes")
    decode = node.get("decode")
    if decode is not None and not (isinstance(decode, dict) and (
        isinstance(decode.get("table"), str) or isinstance(decode.get("zero_point"), int))):
      raise ValueError(f"{where} ({op} {node['out']!r}) has decode {decode!r}; expected None, "
                       "{'table': name} or {'zero_point': int}")
    made.add(node["out"])


def _check_requant(node: dict, tensors: dict[str, np.ndarray]) -> None:
  """Multipliers >= 0, and a threshold requant's levels strictly ascending (one line)."""
  out = node["out"]
  if np.any(tensors[f"{out}.m"] < 0):
    raise ValueError(f"tensor '{out}.m' (node {out!r}) has a negative multiplier; a negative "
                     f"scale is the '{out}.sign' tensor's")
  if node["kind"] == "threshold" and np.any(np.diff(tensors[f"{out}.table"]) <= 0):
    raise ValueError(f"tensor '{out}.table' (node {out!r}) is not strictly ascending")


# The keys of each entry of the tensor index (docs/FORMAT.md).
TENSOR_FIELDS = ("shape", "bits", "signed", "offset", "nbytes")


def _parse(doc: dict, data: bytes, graph_file: str, data_file: str) -> Graph:
  """The graph of a loaded `doc` and its packed `data`; ValueError on a semantic problem."""
  index = doc["tensors"]
  tensors, bits = {}, {}
  end_of_tensors = 0
  for name, entry in index.items():
    missing = [f for f in TENSOR_FIELDS if f not in entry]
    if missing:
      raise ValueError(f"{graph_file}: malformed entry (tensor {name!r} lacks "
                       f"{', '.join(repr(f) for f in missing)}); re-export the model")
    if not isinstance(entry["bits"], int) or not 1 <= entry["bits"] <= 64:
      raise ValueError(f"tensor {name!r}: bits {entry['bits']!r} is not an integer 1 to 64")
    count = int(np.prod(entry["shape"], dtype=np.int64))
    end = entry["offset"] + entry["nbytes"]
    if entry["nbytes"] != packed_bytes(count, entry["bits"]):
      raise ValueError(f"tensor {name!r}: {entry['nbytes']} bytes cannot hold {count} values of "
                       f"{entry['bits']} bits")
    if end > len(data):
      raise ValueError(f"{data_file} is truncated: tensor {name!r} needs bytes up to {end}, the "
                       f"file has {len(data)}")
    tensors[name] = unpack(data[entry["offset"]:end], count, entry["bits"],
                           entry["signed"]).reshape(entry["shape"])
    bits[name] = (int(entry["bits"]), bool(entry["signed"]))
    end_of_tensors = max(end_of_tensors, end)
  if len(data) > end_of_tensors:
    raise ValueError(f"{data_file} has {len(data) - end_of_tensors} trailing bytes after the last "
                     f"tensor (which ends at byte {end_of_tensors})")
  produced = set()
  for node in doc["nodes"]:  # checked by _check_nodes
    for name, shape in _required_tensors(node).items():
      if name not in tensors:
        raise ValueError(f"tensor {name!r} (node {node['out']!r}) is missing from {graph_file}")
      if shape is not None and tuple(tensors[name].shape) != shape:
        raise ValueError(f"tensor {name!r} has shape {tuple(tensors[name].shape)}, node "
                         f"{node['out']!r} expects {shape}")
      if name.endswith(".shift") and tensors[name].size and (
          tensors[name].min() < 0 or tensors[name].max() > MAX_SHIFT):
        raise ValueError(f"tensor {name!r} (node {node['out']!r}) has shifts in "
                         f"[{tensors[name].min()}, {tensors[name].max()}], outside "
                         f"[0, {MAX_SHIFT}]")
    if node["op"] == "requant":
      _check_requant(node, tensors)
    produced.add(node["out"])
  if doc["meta"].get("output") not in produced:
    raise ValueError(f"{graph_file}: output {doc['meta'].get('output')!r} is not a node's output")
  return Graph(doc["meta"], doc["nodes"], tensors, bits)
