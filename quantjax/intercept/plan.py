"""Per-layer quantization rules resolved into a plan: layer path -> its tensors' quantizers.

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
from quantjax.intercept import integer
from quantjax.intercept.layers import LayerInfo
from quantjax.quantizers.base import Quantizer


@dataclasses.dataclass(frozen=True)
class LayerQuant:
  """The quantizers of one layer (None = float).

  `weight` quantizes the kernel and `act` the input activation (both before the matmul/conv);
  `bias` the bias and `output` the layer's result (after the bias, before the model's activation
  function: a symmetric sign-preserving quantizer commutes with ReLU, so this is the post-ReLU
  activation Goyal et al. quantize).
  """

  weight: Quantizer | None = None
  act: Quantizer | None = None
  bias: Quantizer | None = None
  output: Quantizer | None = None

  def any(self) -> bool:
    return any(getattr(self, role) is not None for role in TENSORS)


TENSORS = ("weight", "act", "bias", "output")  # LayerQuant fields, in the order configs list them
# The quantizer role (quantizers.ROLES) of each tensor: static tensors are 'weight', data 'act'.
TENSOR_ROLE = {"weight": "weight", "act": "act", "bias": "weight", "output": "act"}


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
  bias: Mapping[str, Any] | None | str = KEEP
  output: Mapping[str, Any] | None | str = KEEP


@dataclasses.dataclass(frozen=True)
class QuantPlan:
  """Resolved, hashable plan: one LayerQuant per quantized layer path."""

  layers: tuple[tuple[str, LayerQuant], ...] = ()
  # Where a layer's quantized products run on its integers: 'auto' (on a CPU), 'on', 'off'
  # (always the float product of the fake-quantized values); `quantjax.intercept.integer`.
  integer_products: str = "auto"

  def get(self, path: str) -> LayerQuant | None:
    return dict(self.layers).get(path)

  def as_dict(self) -> dict[str, LayerQuant]:
    return dict(self.layers)

  def __bool__(self) -> bool:
    return bool(self.layers)


def _merge(base: Mapping[str, Any] | None, override: Any) -> dict[str, Any] | None:
  """Applies an override to a base spec.

  None means float; a dict with a 'name' is a complete spec of its own; a dict without one changes
  those fields of the base spec. A field set to None is not set (configs list every field of a
  quantizer, `intercept.spec`, so that any can be overridden on the command line).
  """
  if override is None:
    return None
  override = {k: v for k, v in dict(override).items() if v is not None}
  if "name" in override or base is None:
    return override or None
  return {**base, **override}


def _default_spec(spec: Mapping[str, Any] | None) -> dict[str, Any] | None:
  """A default spec as the plan reads it: fields set to None are not set; name 'float' is None."""
  if spec is None:
    return None
  spec = {k: v for k, v in dict(spec).items() if v is not None}
  return None if spec.get("name") in ("none", "float") else spec


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
    bias: Mapping[str, Any] | None = None,
    output: Mapping[str, Any] | None = None,
    integer_products: str = "auto",
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
    bias: default bias quantizer spec; None (the default) = float.
    output: default layer-output quantizer spec; None (the default) = float.
    integer_products: 'auto', 'on' or 'off' (`QuantPlan.integer_products`).

  Returns:
    The resolved QuantPlan. Raises ValueError naming the bad regex or spec.
  """
  integer.check_mode(integer_products)
  paths = [layer.path for layer in layers]
  specs: dict[str, dict[str, Any]] = {}
  defaults = {"weight": weight, "act": act, "bias": bias, "output": output}
  for path in _matching(pattern, paths, "quant.layers"):
    specs[path] = dict(defaults)
  for override, path in ((first_layer, paths[0]), (last_layer, paths[-1])):
    if override and path in specs:
      for role in TENSORS:
        if role in override:
          specs[path][role] = _merge(specs[path][role], override[role])
  for rule in rules:
    for path in _matching(rule.pattern, paths, "rule"):
      entry = specs.setdefault(path, dict(defaults))
      for role in TENSORS:
        override = getattr(rule, role)
        if not (isinstance(override, str) and override == KEEP):
          entry[role] = _merge(entry[role] or defaults[role], override)
  resolved = []
  for path in paths:
    if path in specs:
      lq = LayerQuant(**{
          role: _build(specs[path][role], TENSOR_ROLE[role], f"layer {path!r} {role} quantizer")
          for role in TENSORS})
      if lq.any():
        resolved.append((path, lq))
  return QuantPlan(tuple(resolved), integer_products)


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
  q.update({role: _default_spec(q.get(role)) for role in TENSORS})
  rules = [Rule(pattern=r["pattern"], **{role: r.get(role, KEEP) for role in TENSORS})
           for r in q.get("rules", ()) or ()]
  return resolve(
      layers,
      weight=q.get("weight"),
      act=q.get("act"),
      pattern=q.get("layers", ".*"),
      first_layer=q.get("first_layer"),
      last_layer=q.get("last_layer"),
      rules=rules,
      bias=q.get("bias"),
      output=q.get("output"),
      integer_products=q.get("integer_products", "auto"),
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
  integer.check_mode(q.get("integer_products", "auto"))
  base = {role: _default_spec(q.get(role)) for role in TENSORS}
  for role in TENSORS:
    _build(base[role], TENSOR_ROLE[role], f"quant.{role}")
  for where in ("first_layer", "last_layer"):
    for role, override in (q.get(where) or {}).items():
      _build(_merge(base.get(role), override), TENSOR_ROLE.get(role, role),
             f"quant.{where}.{role}")
  for i, rule in enumerate(q.get("rules", ()) or ()):
    fields = ("pattern", *TENSORS)
    if not isinstance(rule, Mapping) or "pattern" not in rule or set(rule) - set(fields):
      raise ValueError(f"quant.rules[{i}]={rule!r} is not a rule: a dict with a 'pattern' and any "
                       f"of {', '.join(TENSORS)} (valid fields: {', '.join(fields)}); on the "
                       "command line a list, --config.quant.rules=\"[{'pattern': 'fc1', "
                       "'weight': {'bits': 2}}]\"")
    for role in TENSORS:
      if rule.get(role, KEEP) not in (None, KEEP):
        _build(_merge(base[role], rule[role]), TENSOR_ROLE[role],
               f"quant.rules[{rule.get('pattern')!r}].{role}")
