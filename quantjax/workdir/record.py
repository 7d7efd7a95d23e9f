"""The config a workdir records, and what a resume may change in it.

`config.json` is the record of a run. Resuming compares the new config with it field by field
(dotted leaves: `quant.weight.bits`). A changed field is refused, except the fields in
`SAFE_FIELDS`, which change how a run is watched or how long it goes on, never what its steps
compute; those are kept as dated amendments beside the record (`config_amendments.json`), so the
record itself is never rewritten.

A field that only one side has (added to the configs after the run was made, or removed since)
is an amendment too, so that runs resume across such changes of the code (as
bench/accuracy_table.py reads them back): it is written down, not compared.
"""

from __future__ import annotations

import json
from typing import Any

import ml_collections

# Fields a resume may change, and why that is safe.
SAFE_FIELDS = {
    "num_epochs": "only upwards: the run goes on from its last step",
    "log_every_steps": "logging",
    "checkpoint_every_steps": "checkpoint interval",
    "keep_checkpoints": "checkpoint retention",
    "eval_every_epochs": "validation during training (reads, never updates, the weights)",
    "eval_batch_size": "evaluation batching (every example counted once either way)",
    "tensorboard": "TensorBoard event files",
    "histogram_every_steps": "TensorBoard histograms (read the weights, never update them)",
    "data_dir": "where the same dataset is stored",
    "num_devices": "how many devices share each (identical) global batch",
    "cpu_devices": "how many CPU devices share each (identical) global batch",
    "conv_kernel_grad": "how the convolutions' kernel gradient is summed (the same sum, float32 "
                        "rounding apart)",
    "quant.integer_products": "whether products run on the integers (the same sums, float32 "
                              "rounding apart)",
}
ABSENT = "<absent>"


def canonical(value: Any) -> Any:
  """Plain JSON-like data (sorted dicts, lists) of a config or any of its values."""
  if isinstance(value, ml_collections.ConfigDict):
    value = value.to_dict()
  if isinstance(value, dict):
    return {str(k): canonical(v) for k, v in sorted(value.items(), key=lambda kv: str(kv[0]))}
  if isinstance(value, (list, tuple)):
    return [canonical(v) for v in value]
  return value


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
  """Dotted leaf paths of a canonical config (lists and empty dicts are leaves)."""
  out = {}
  for key, value in tree.items():
    path = f"{prefix}{key}"
    if isinstance(value, dict) and value:
      out.update(flatten(value, f"{path}."))
    else:
      out[path] = value
  return out


def diff(old: dict[str, Any], new: dict[str, Any]) -> list[tuple[str, Any, Any]]:
  """(field, old, new) for every dotted field that differs; a missing side is `ABSENT`."""
  a, b = flatten(canonical(old)), flatten(canonical(new))
  return [(k, a.get(k, ABSENT), b.get(k, ABSENT)) for k in sorted(set(a) | set(b))
          if _dump(a.get(k, ABSENT)) != _dump(b.get(k, ABSENT))]


def is_safe(field: str, old: Any, new: Any) -> bool:
  if ABSENT in (old, new):
    return True  # the field was added to, or removed from, the configs since the run was made
  if field not in SAFE_FIELDS:
    return False
  if field == "num_epochs":
    return isinstance(new, (int, float)) and isinstance(old, (int, float)) and new >= old
  return True


def refused(changes: list[tuple[str, Any, Any]]) -> list[tuple[str, Any, Any]]:
  """The changes a resume may not make.

  A field present on one side only is safe unless a field beneath it (or above it) is present
  on the other: that is a value replaced by a group of fields, or the reverse (None -> {...}).
  """
  fields = [f for f, _, _ in changes]

  def regrouped(field: str) -> bool:
    return any(g != field and (g.startswith(field + ".") or field.startswith(g + "."))
               for g in fields)

  return [c for c in changes
          if not is_safe(*c) or (ABSENT in (c[1], c[2]) and regrouped(c[0]))]


def short(value: Any, limit: int = 80) -> str:
  text = value if value == ABSENT else _dump(value)
  return text if len(text) <= limit else text[: limit - 3] + "..."


def describe(changes: list[tuple[str, Any, Any]]) -> tuple[str, str]:
  """('f=old, g=old', 'f=new, g=new') of `changes`, nested fields under their top-level name.

  `quant.weight.bits` 4 -> 3 reads `quant={"weight": {"bits": 4}}`: only the leaves that differ.
  """
  groups: dict[str, list[tuple[str, Any, Any]]] = {}
  for field, old, new in changes:
    groups.setdefault(field.split(".")[0], []).append((field, old, new))

  def side(index: int) -> str:
    parts = []
    for top, items in groups.items():
      if len(items) == 1 and items[0][0] == top:
        parts.append(f"{top}={short(items[0][index])}")
      else:
        try:
          sub = apply({}, {f.split(".", 1)[1]: c[index - 1] for f, *c in items})
          parts.append(f"{top}={short(sub, 120)}")
        except (AttributeError, TypeError):  # a value and fields beneath it: list them flat
          parts.extend(f"{f}={short(c[index - 1])}" for f, *c in items)
    return ", ".join(parts)

  return side(1), side(2)


def apply(record: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
  """`record` with dotted `changes` ({field: new value}) set."""
  out = json.loads(json.dumps(record))
  for field, value in changes.items():
    *parents, leaf = field.split(".")
    node = out
    for p in parents:
      node = node.setdefault(p, {})
    if value == ABSENT:
      node.pop(leaf, None)
    else:
      node[leaf] = value
  return out


def _dump(value: Any) -> str:
  return json.dumps(value, sort_keys=True, default=str)
