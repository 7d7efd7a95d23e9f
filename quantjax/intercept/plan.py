"""Per-layer quantization rules resolved into a plan: layer path -> (weight, input) quantizers.

Rules match module paths with regular expressions (`re.fullmatch`), are applied in order (a later
rule overrides an earlier one), and the first and last layers (in call order) can have their own
settings, as is usual for low-bit networks. A rule that matches no layer is an error.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping, Sequence
from typing import Any

from quantjax import quantizers
from quantjax.intercept.layers import LayerInfo
from quantjax.quantizers.base import Quantizer


@dataclasses.dataclass(frozen=True)
class LayerQuant:
  """The quantizers of one layer: its kernel and its input activation (None = float)."""

  weight: Quantizer | None = None
  act: Quantizer | None = None


KEEP = "keep"  # a Rule field left at KEEP does not change that tensor's quantizer


@dataclasses.dataclass(frozen=True)
class Rule:
  """Layers whose path fully matches `pattern` get these overrides.

  Each override is a dict of fields changed from the default spec (a dict with a 'name' replaces
  it), None to keep that tensor float, or KEEP to leave it as earlier rules set it.
  """

  pattern: str
  weight: Mapping[str, Any] | None | str = KEEP
  act: Mapping[str, Any] | None | str = KEEP


@dataclasses.dataclass(frozen=True)
class QuantPlan:
  """Resolved, hashable plan: one LayerQuant per quantized layer path."""

  layers: tuple[tuple[str, LayerQuant], ...] = ()

  def get(self, path: str) -> LayerQuant | None:
    return dict(self.layers).get(path)

  def as_dict(self) -> dict[str, LayerQuant]:
    return dict(self.layers)

  def __bool__(self) -> bool:
    return bool(self.layers)


def _merge(base: Mapping[str, Any] | None, override: Any) -> dict[str, Any] | None:
  """Applies an override to a base spec.

  None means float; a dict with a 'name' is a complete spec of its own; a dict without one changes
  those fields of the base spec.
  """
  if override is None:
    return None
  override = dict(override)
  if "name" in override or base is None:
    return override or None
  return {**base, **override}


def _build(spec: Mapping[str, Any] | None, role: str, where: str) -> Quantizer | None:
  """The quantizer of `spec`; errors say where it came from (a layer or a config field)."""
  try:
    q = quantizers.from_dict(spec)
    if q is not None:
      q.validate_role(role)
    return q
  except ValueError as e:
    raise ValueError(f"{where}: {e}") from None


def resolve(
    layers: Sequence[LayerInfo],
    *,
    weight: Mapping[str, Any] | None,
    act: Mapping[str, Any] | None,
    pattern: str = ".*",
    first_layer: Mapping[str, Any] | None = None,
    last_layer: Mapping[str, Any] | None = None,
    rules: Sequence[Rule] = (),
) -> QuantPlan:
  """Builds the plan for `layers` (in call order).

  Args:
    layers: the model's layers from `discover_layers`.
    weight: default kernel quantizer spec, e.g. `{'name': 'uniform', 'bits': 4}`; None = float.
    act: default input-activation quantizer spec; None = float.
    pattern: regex of the layer paths to quantize at all.
    first_layer: `{'weight': override, 'act': override}` for the first layer; an override is a dict
      of fields changed from the default, or None to keep that tensor float. Missing keys keep the
      default.
    last_layer: the same for the last layer.
    rules: further per-path overrides, applied in order.

  Returns:
    The resolved QuantPlan. Raises ValueError naming the bad regex or spec.
  """
  paths = [layer.path for layer in layers]
  specs: dict[str, dict[str, Any]] = {}
  for path in _matching(pattern, paths, "quant.layers"):
    specs[path] = {"weight": weight, "act": act}
  for override, path in ((first_layer, paths[0]), (last_layer, paths[-1])):
    if override and path in specs:
      for role in ("weight", "act"):
        if role in override:
          specs[path][role] = _merge(specs[path][role], override[role])
  defaults = {"weight": weight, "act": act}
  for rule in rules:
    for path in _matching(rule.pattern, paths, "rule"):
      entry = specs.setdefault(path, dict(defaults))
      for role in ("weight", "act"):
        override = getattr(rule, role)
        if not (isinstance(override, str) and override == KEEP):
          entry[role] = _merge(entry[role] or defaults[role], override)
  resolved = []
  for path in paths:
    if path in specs:
      lq = LayerQuant(
          weight=_build(specs[path]["weight"], "weight", f"layer {path!r} weight quantizer"),
          act=_build(specs[path]["act"], "act", f"layer {path!r} act quantizer"),
      )
      if lq.weight is not None or lq.act is not None:
        resolved.append((path, lq))
  return QuantPlan(tuple(resolved))


def _matching(pattern: str, paths: Sequence[str], what: str) -> list[str]:
  try:
    regex = re.compile(pattern)
  except re.error as e:
    raise ValueError(f"{what} regex {pattern!r} is invalid: {e}") from None
  matched = [p for p in paths if regex.fullmatch(p)]
  if not matched:
    raise ValueError(f"{what} regex {pattern!r} matches no layer; layers are: {', '.join(paths)}")
  return matched


def plan_from_config(quant_config: Mapping[str, Any] | None,
                     layers: Sequence[LayerInfo]) -> QuantPlan:
  """Resolves the `config.quant` block (see configs/default.py) for these layers."""
  if not quant_config or not quant_config.get("enabled", True):
    return QuantPlan()
  q = _plain(quant_config)
  rules = [Rule(pattern=r["pattern"], weight=r.get("weight", KEEP), act=r.get("act", KEEP))
           for r in q.get("rules", ()) or ()]
  return resolve(
      layers,
      weight=q.get("weight"),
      act=q.get("act"),
      pattern=q.get("layers", ".*"),
      first_layer=q.get("first_layer"),
      last_layer=q.get("last_layer"),
      rules=rules,
  )


def _plain(value: Any) -> Any:
  """ConfigDict / FrozenConfigDict -> plain dicts and lists."""
  if hasattr(value, "to_dict"):
    value = value.to_dict()
  if isinstance(value, Mapping):
    return {k: _plain(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [_plain(v) for v in value]
  return value


def check_quant_config(quant_config: Mapping[str, Any] | None) -> None:
  """Validates every quantizer spec in `config.quant` without needing the model (fails fast)."""
  if not quant_config or not quant_config.get("enabled", True):
    return
  q = _plain(quant_config)
  base = {"weight": q.get("weight"), "act": q.get("act")}
  for role in ("weight", "act"):
    _build(base[role], role, f"quant.{role}")
  for where in ("first_layer", "last_layer"):
    for role, override in (q.get(where) or {}).items():
      _build(_merge(base.get(role), override), role, f"quant.{where}.{role}")
  for rule in q.get("rules", ()) or ():
    for role in ("weight", "act"):
      if rule.get(role, KEEP) not in (None, KEEP):
        _build(_merge(base[role], rule[role]), role,
               f"quant.rules[{rule.get('pattern')!r}].{role}")
