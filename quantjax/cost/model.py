"""Hardware cost of a quantized network, absolute and as a reduction against all-8-bit.

The figures (per layer and in total), for the Conv/Dense layers of a plan:

- memory (Goyal et al., arXiv:2102.02147; METHODS.md §4), in bits:
  `Σ_layers b_w·#W + b_b·#bias + b_a·#activations per image`, where the activations are the
  layer's outputs (for a conv `H_out·W_out·C_out`);
- multiplication cost (Goyal et al.): `Σ_layers b_w·#W·b_a·H_out·W_out`, with `b_a` the layer's
  own output bits (dense layers have `H_out·W_out = 1`);
- bit operations (BOPs, as in Baskin et al. / van Baalen et al.): `Σ_layers MACs·b_w·b_in`, with
  `MACs = #W·H_out·W_out` and `b_in` the bits of the layer's input;
- parameter bytes with real sub-byte packing: each tensor is one packed bit stream,
  `ceil(#values·ceil(b)/8)` bytes (a non-integer equivalent width, such as NUUQ's log2 N, packs at
  `ceil(b)` bits).

Bits come from the plan: the kernel and bias quantizers give `b_w` and `b_b`; a layer's output
bits are its `output` quantizer's, else the `act` (input) quantizer's of the layer called next;
its input bits are its `act` quantizer's, else the previous layer's output quantizer's. Anything
left unquantized counts as 32-bit float. The reference quantizes every weight, bias and activation
(the network's input image included) at 8 bits.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

from quantjax.intercept import LayerInfo, QuantPlan

FLOAT_BITS = 32
REFERENCE_BITS = 8
TOTALS = ("memory_bits", "weight_memory_bits", "bias_memory_bits", "activation_memory_bits",
          "mult_cost", "bops", "param_bytes")


@dataclasses.dataclass(frozen=True)
class LayerBits:
  """The bit widths of one layer's tensors (32 = float)."""

  weight: float = FLOAT_BITS
  bias: float = FLOAT_BITS
  input: float = FLOAT_BITS
  output: float = FLOAT_BITS


def _bits(quantizer) -> float:
  return float(quantizer.bits) if quantizer is not None else float(FLOAT_BITS)


def layer_bits(layers: Sequence[LayerInfo], plan: QuantPlan | None) -> list[LayerBits]:
  """Each layer's (weight, bias, input, output) bits under `plan`, in call order."""
  quants = [plan.get(layer.path) if plan else None for layer in layers]
  result = []
  for i, lq in enumerate(quants):
    prev = quants[i - 1] if i > 0 else None
    nxt = quants[i + 1] if i + 1 < len(quants) else None
    if lq is not None and lq.act is not None:
      input_bits = _bits(lq.act)
    else:
      input_bits = _bits(prev.output if prev is not None else None)
    if lq is not None and lq.output is not None:
      output_bits = _bits(lq.output)
    else:
      output_bits = _bits(nxt.act if nxt is not None else None)
    result.append(LayerBits(
        weight=_bits(lq.weight if lq else None),
        bias=_bits(lq.bias if lq else None),
        input=input_bits,
        output=output_bits,
    ))
  return result


def _packed_bytes(count: int, bits: float) -> int:
  return math.ceil(count * math.ceil(bits) / 8)


def _layer_cost(layer: LayerInfo, bits: LayerBits) -> dict[str, Any]:
  out_hw = math.prod(layer.output_shape[1:-1])  # H_out·W_out for a conv, 1 for a dense layer
  num_outputs = math.prod(layer.output_shape[1:])  # activations per image
  macs = layer.num_weights * out_hw
  weight_mem = bits.weight * layer.num_weights
  bias_mem = bits.bias * layer.num_bias
  act_mem = bits.output * num_outputs
  return {
      "layer": layer.path,
      "weight_bits": bits.weight,
      "bias_bits": bits.bias if layer.num_bias else 0,
      "input_bits": bits.input,
      "output_bits": bits.output,
      "num_weights": layer.num_weights,
      "num_bias": layer.num_bias,
      "num_outputs": num_outputs,
      "macs": macs,
      "weight_memory_bits": weight_mem,
      "bias_memory_bits": bias_mem,
      "activation_memory_bits": act_mem,
      "memory_bits": weight_mem + bias_mem + act_mem,
      "mult_cost": bits.weight * layer.num_weights * bits.output * out_hw,
      "bops": macs * bits.weight * bits.input,
      "param_bytes": (_packed_bytes(layer.num_weights, bits.weight)
                      + _packed_bytes(layer.num_bias, bits.bias)),
  }


def cost_report(layers: Sequence[LayerInfo], plan: QuantPlan | None = None, *,
                bits: Sequence[LayerBits] | None = None) -> dict[str, Any]:
  """Per-layer costs, totals, the all-8-bit reference and the reduction against it.

  Args:
    layers: the model's layers in call order (`discover_layers`).
    plan: the quantization plan the bits are read from (None: float).
    bits: explicit per-layer bits instead of the plan's (e.g. a search's candidates).

  Returns:
    `{'layers': [...], 'total': {...}, 'reference_8bit': {...}, 'reduction_vs_8bit': {...}}`;
    a reduction is `1 - total/reference` (0.6 = 60 % cheaper than all-8-bit).
  """
  if bits is None:
    bits = layer_bits(layers, plan)
  if len(bits) != len(layers):
    raise ValueError(f"bits has {len(bits)} entries for {len(layers)} layers")
  rows = [_layer_cost(layer, b) for layer, b in zip(layers, bits, strict=True)]
  ref_bits = LayerBits(*(4 * [REFERENCE_BITS]))
  ref_rows = [_layer_cost(layer, ref_bits) for layer in layers]
  total = {k: sum(r[k] for r in rows) for k in TOTALS}
  reference = {k: sum(r[k] for r in ref_rows) for k in TOTALS}
  return {
      "layers": rows,
      "total": total,
      "reference_8bit": reference,
      "reduction_vs_8bit": {k: 1.0 - total[k] / reference[k] if reference[k] else 0.0
                            for k in TOTALS},
  }
