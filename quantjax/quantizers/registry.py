"""Registry of quantizers by name, so configs can name them as strings."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

_REGISTRY: dict[str, type] = {}


def register(name: str):
  """Class decorator registering a quantizer config dataclass under `name`.

  A class redefined in the same module under the same name (a notebook cell run again) replaces
  its earlier version; any other class claiming a taken name is an error.
  """

  def wrap(cls):
    old = _REGISTRY.get(name)
    if old is not None and (old.__module__, old.__qualname__) != (cls.__module__, cls.__qualname__):
      raise ValueError(f"quantizer {name!r} is already registered by {_REGISTRY[name].__name__}")
    cls.registry_name = name
    _REGISTRY[name] = cls
    return cls

  return wrap


def names() -> list[str]:
  """Sorted names of all registered quantizers."""
  return sorted(_REGISTRY)


def get(name: str) -> type:
  """The quantizer class registered as `name`; the error lists the valid names."""
  try:
    return _REGISTRY[name]
  except KeyError:
    raise ValueError(
        f"unknown quantizer {name!r}; valid quantizers: {', '.join(names())}"
    ) from None


def from_dict(spec: Mapping[str, Any] | None):
  """Builds a quantizer from `{'name': ..., **fields}` (a config dict), or None.

  Unknown fields and out-of-range values raise a one-line ValueError naming the bad value.
  """
  if spec is None:
    return None
  spec = dict(spec)
  if "name" not in spec:
    raise ValueError(f"quantizer spec {spec} has no 'name'; valid quantizers: {', '.join(names())}")
  name = spec.pop("name")
  if name in (None, "none", "float"):
    return None
  cls = get(name)
  valid = {f.name for f in dataclasses.fields(cls) if f.init}
  unknown = sorted(set(spec) - valid)
  if unknown:
    raise ValueError(
        f"quantizer {name!r} has no field(s) {', '.join(unknown)}; valid fields: "
        f"{', '.join(sorted(valid))}"
    )
  return cls(**spec)
