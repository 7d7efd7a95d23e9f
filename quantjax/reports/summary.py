"""Per-layer bit widths and model size of a quantization plan."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

from quantjax.intercept import LayerInfo, QuantPlan

FLOAT_BITS = 32


def _multiplier(quantizer) -> dict[str, Any]:
  """What the multiplier sees of the quantizer's values (kind, operand and shift bits)."""
  if quantizer is None:
    return {"kind": "float", "operand_bits": FLOAT_BITS, "shift_bits": 0}
  return dataclasses.asdict(quantizer.multiplier)


def _prefixed(tree: dict[str, Any] | None, prefix: str) -> dict[str, Any]:
  return {k[len(prefix):]: v for k, v in (tree or {}).items() if k.startswith(prefix)}


def layer_table(layers: Sequence[LayerInfo], plan: QuantPlan | None,
                variables: dict[str, Any] | None = None) -> list[dict[str, Any]]:
  """One row per Conv/Dense layer: its quantizers, bits and sizes (float layers at 32 bits).

  `weight_bits` is what each weight stores (a table quantizer's index width) and
  `weight_table_bits` the kernel's level tables, which `weight_size_bits` includes;
  `weight_multiplier`, `act_multiplier` and `output_multiplier` say what the multiplier sees
  (`quantizers.base.Multiplier`: kind, operand bits, shift bits). With the trained `variables`,
  each quantized kernel's storage figures are added (for NUUQ: packed bits and the entropy of its
  index histogram) as `weight_storage`.
  """
  rows = []
  for layer in layers:
    lq = plan.get(layer.path) if plan else None
    weight = lq.weight if lq else None
    act = lq.act if lq else None
    bias = getattr(lq, "bias", None)  # post-training plans also quantize biases and outputs
    output = getattr(lq, "output", None)
    weight_bits = weight.bits if weight else FLOAT_BITS
    table_bits = weight.storage.table_memory_bits(layer.kernel_shape[-1]) if weight else 0
    rows.append({
        "layer": layer.path,
        "kind": layer.kind,
        "weight_quantizer": weight.describe() if weight else "float",
        "act_quantizer": act.describe() if act else "float",
        "bias_quantizer": bias.describe() if bias else "float",
        "output_quantizer": output.describe() if output else "float",
        "weight_bits": weight_bits,
        "act_bits": act.bits if act else FLOAT_BITS,
        "output_bits": output.bits if output else FLOAT_BITS,
        "weight_table_bits": table_bits,
        "weight_multiplier": _multiplier(weight),
        "act_multiplier": _multiplier(act),
        "output_multiplier": _multiplier(output),
        "num_weights": layer.num_weights,
        "num_bias": layer.num_bias,
        "weight_size_bits": weight_bits * layer.num_weights + table_bits,
    })
    if weight is not None and variables is not None:
      params = _nested(variables.get("params"), layer.path)
      state = _nested(variables.get("quant_state"), layer.path)
      if params and "kernel" in params:
        rows[-1]["weight_storage"] = weight.storage_stats(
            params["kernel"], _prefixed(params, "kernel_"), _prefixed(state, "kernel_"))
  return rows


def _nested(tree: dict[str, Any] | None, path: str) -> dict[str, Any] | None:
  for key in path.split("/"):
    if not isinstance(tree, dict) or key not in tree:
      return None
    tree = tree[key]
  return tree


def model_size_bits(rows: Sequence[dict[str, Any]],
                    bias_bits: int = FLOAT_BITS) -> dict[str, float]:
  """Total weight storage of the Conv/Dense layers (level tables included); its ratio to float32."""
  weights = sum(r["weight_size_bits"] for r in rows)
  biases = sum(r["num_bias"] for r in rows) * bias_bits
  count = sum(r["num_weights"] + r["num_bias"] for r in rows)
  total = weights + biases
  extra = {}
  for key in ("packed_bits", "entropy_bits"):
    # Weight storage with this figure where a layer reports it, and its code width elsewhere;
    # level tables included.
    extra[f"weight_size_{key}"] = sum(
        r.get("weight_storage", {}).get(key, r["weight_bits"]) * r["num_weights"]
        + r.get("weight_table_bits", 0) for r in rows)
  return {
      **extra,
      "model_size_bits": total,
      "model_size_kib": total / 8 / 1024,
      "float_size_bits": count * FLOAT_BITS,
      "compression_vs_float": count * FLOAT_BITS / max(total, 1),
  }
