"""Per-layer bit widths and model size of a quantization plan."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from quantjax.intercept import LayerInfo, QuantPlan

FLOAT_BITS = 32


def layer_table(layers: Sequence[LayerInfo], plan: QuantPlan | None) -> list[dict[str, Any]]:
  """One row per Conv/Dense layer: its quantizers, bits and sizes (float layers at 32 bits)."""
  rows = []
  for layer in layers:
    lq = plan.get(layer.path) if plan else None
    weight = lq.weight if lq else None
    act = lq.act if lq else None
    weight_bits = weight.bits if weight else FLOAT_BITS
    rows.append({
        "layer": layer.path,
        "kind": layer.kind,
        "weight_quantizer": weight.describe() if weight else "float",
        "act_quantizer": act.describe() if act else "float",
        "weight_bits": weight_bits,
        "act_bits": act.bits if act else FLOAT_BITS,
        "num_weights": layer.num_weights,
        "num_bias": layer.num_bias,
        "weight_size_bits": weight_bits * layer.num_weights,
    })
  return rows


def model_size_bits(rows: Sequence[dict[str, Any]],
                    bias_bits: int = FLOAT_BITS) -> dict[str, float]:
  """Total weight storage of the Conv/Dense layers, and its ratio to float32."""
  weights = sum(r["weight_size_bits"] for r in rows)
  biases = sum(r["num_bias"] for r in rows) * bias_bits
  count = sum(r["num_weights"] + r["num_bias"] for r in rows)
  total = weights + biases
  return {
      "model_size_bits": total,
      "model_size_kib": total / 8 / 1024,
      "float_size_bits": count * FLOAT_BITS,
      "compression_vs_float": count * FLOAT_BITS / max(total, 1),
  }
