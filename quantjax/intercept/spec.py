"""Quantizer specs as config files write them: every field of the quantizer spelled out.

ml_collections overrides only the fields a locked config holds:
`--config.quant.weight.estimator=ste` needs an `estimator` field in `config.quant.weight`, and it
takes its parser (int, float, str, bool) from the field's type. So a config builds its quantizer
specs here, and each spec holds every field of its quantizer's dataclass:

- `quantizer_spec('uniform', bits=4)`: `{'name': 'uniform', 'bits': 4, 'estimator': 'clipped_ste',
  ...}`, the fields not given at their dataclass defaults. A field whose default is None (`int |
  None`, e.g. `fractional_bits`) is a typed placeholder, so `--config...fractional_bits=3` parses
  an int.
- `quantizer_changes(bits=8)`: the changes a first-layer or last-layer entry makes to the default
  spec; `quantizer_changes(name='float')` also stands for a float tensor that can be given a
  quantizer (`quant.bias`). Every field of every registered quantizer is present, None where unset
  (`intercept.plan` drops the None fields before merging), and so is `name`: None keeps the default
  spec's quantizer, 'float' keeps the tensor float, another name makes the entry a complete spec of
  that quantizer (`--config.quant.first_layer.act.name=uniform --config...act.bits=8`).

A spec naming a field its quantizer lacks is a one-line ValueError naming the valid fields.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any

import ml_collections
from ml_collections import config_dict

from quantjax import quantizers


def field_types(name: str) -> dict[str, type]:
  """Field -> type (None stripped from `X | None`) of the quantizer registered as `name`."""
  cls = quantizers.get(name)
  hints = typing.get_type_hints(cls)
  out = {}
  for field in dataclasses.fields(cls):
    if field.init:
      kind = hints[field.name]
      if isinstance(kind, types.UnionType) or typing.get_origin(kind) is typing.Union:
        kind = next(t for t in typing.get_args(kind) if t is not type(None))
      out[field.name] = kind
  return out


def _check_fields(name: str, fields: dict[str, Any]) -> dict[str, type]:
  valid = field_types(name)
  unknown = sorted(set(fields) - set(valid))
  if unknown:
    raise ValueError(f"quantizer {name!r} has no field(s) {', '.join(unknown)}; valid fields: "
                     f"{', '.join(sorted(valid))}")
  return valid


def quantizer_spec(name: str, **fields: Any) -> ml_collections.ConfigDict:
  """A complete spec of quantizer `name` holding every field of its dataclass.

  Args:
    name: registry name, e.g. 'uniform'.
    **fields: the fields to set; the others keep the dataclass defaults.

  Returns:
    ConfigDict `{'name': name, **every field}`; the fields whose default is None are typed
    placeholders (None until set).
  """
  valid = _check_fields(name, fields)
  cls = quantizers.get(name)
  defaults = {f.name: f.default for f in dataclasses.fields(cls)
              if f.init and f.default is not dataclasses.MISSING}
  spec = ml_collections.ConfigDict({"name": name})
  for field, kind in valid.items():
    value = fields.get(field, defaults.get(field))
    spec[field] = config_dict.placeholder(kind) if value is None else value
  return spec


def quantizer_changes(**fields: Any) -> ml_collections.ConfigDict:
  """Changes to a default spec: the given fields, every other field of every quantizer None.

  The entry lists the fields of all registered quantizers, not only the default spec's, so it
  stays complete when a config or an override changes the default's quantizer; the merged spec is
  checked against its own quantizer (`plan.check_quant_config`).

  Args:
    **fields: the changed fields, and optionally `name`: 'float' keeps the tensor float, another
      registered name makes the entry a complete spec of its own.

  Returns:
    ConfigDict of `name` and every quantizer field: the given values, typed None placeholders
    elsewhere.
  """
  valid = {"name": str, **all_field_types()}
  unknown = sorted(set(fields) - set(valid))
  if unknown:
    raise ValueError(f"no quantizer has field(s) {', '.join(unknown)}; valid fields: "
                     f"{', '.join(sorted(valid))}")
  return ml_collections.ConfigDict({
      field: fields[field] if fields.get(field) is not None else config_dict.placeholder(kind)
      for field, kind in sorted(valid.items())})


def all_field_types() -> dict[str, type]:
  """Field -> type over every registered quantizer (`object` where two disagree on the type)."""
  out: dict[str, type] = {}
  for name in quantizers.names():
    for field, kind in field_types(name).items():
      out[field] = kind if out.get(field, kind) is kind else object
  return out
