"""The plan as a table: every Conv/Dense layer with its quantizers, every float layer with why."""

from __future__ import annotations

from collections.abc import Sequence

from quantjax.intercept.layers import FloatLayer, LayerInfo
from quantjax.intercept.plan import QuantPlan


def _label(quantizer) -> str:
  return "float" if quantizer is None else quantizer.describe()


def plan_rows(layers: Sequence[LayerInfo], plan: QuantPlan,
              float_layers: Sequence[FloatLayer] = ()) -> list[dict[str, str]]:
  """One row per layer: path, kind, weight and input quantizer, and the note for a float one.

  Args:
    layers: `discover_layers(model, sample)`.
    plan: `resolve(layers, ...)` or `plan_from_config(...)`.
    float_layers: `discover_float_layers(model, sample)`: layers no quantizer applies to.

  Returns:
    Rows in call order (Conv/Dense layers), then the float layers.
  """
  rows = []
  for layer in layers:
    lq = plan.get(layer.path)
    note = "" if lq is not None and lq.any() else "float: no rule quantizes it"
    rows.append({"layer": layer.path, "kind": layer.kind,
                 "weight": _label(lq and lq.weight), "input": _label(lq and lq.act), "note": note})
  for layer in float_layers:
    rows.append({"layer": layer.path, "kind": layer.kind, "weight": "float", "input": "float",
                 "note": layer.reason})
  return rows


def format_plan(layers: Sequence[LayerInfo], plan: QuantPlan,
                float_layers: Sequence[FloatLayer] = ()) -> str:
  """`plan_rows` as a fixed-width text table."""
  rows = plan_rows(layers, plan, float_layers)
  columns = ["layer", "kind", "weight", "input", "note"]
  widths = {c: max(len(c), *(len(r[c]) for r in rows)) for c in columns}
  lines = ["  ".join(c.ljust(widths[c]) for c in columns).rstrip()]
  lines.append("  ".join("-" * widths[c] for c in columns))
  lines += ["  ".join(r[c].ljust(widths[c]) for c in columns).rstrip() for r in rows]
  return "\n".join(lines)
