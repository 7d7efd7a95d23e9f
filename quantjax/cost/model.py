"""Hardware cost of a quantized network, absolute and as a reduction against all-8-bit.

What a tensor stores and what the multiplier sees of it are different widths, and the model keeps
them apart: each quantizer says both through its contract (`Quantizer.storage`,
`Quantizer.multiplier`). NUUQ stores a log2 N-bit index but multiplies the b-bit grid code it
selects; Liss stores a b-bit index and multiplies an M-bit integer; PoT and log shift; ESB
multiplies k-bit significands and shifts.

The figures (per layer and in total), for the Conv/Dense layers of a plan:

- memory (Goyal et al., arXiv:2102.02147; METHODS.md §4), in bits, of what is stored:
  `Σ_layers b_w·#W + b_b·#bias + b_a·#activations per image`, with the b's the stored (index)
  bits and the activations the layer's outputs (for a conv `H_out·W_out·C_out`), plus each level
  table once (per tensor, or per output channel where the quantizer says so): NUUQ's N b-bit
  entries, Liss's 2^b M-bit entries;
- multiplication cost (Goyal et al.): `Σ_layers m_w·#W·m_a·H_out·W_out`, with `m_w` and `m_a` the
  multiplier operand widths of the weights and of the layer's own output (dense layers have
  `H_out·W_out = 1`);
- bit operations (BOPs, as in Baskin et al. / van Baalen et al.): `Σ_layers MACs·m_w·m_in`, with
  `MACs = #W·H_out·W_out` and `m_in` the operand width of the layer's input;
- parameter bytes with real sub-byte packing: each tensor is one packed bit stream,
  `ceil(#values·ceil(b)/8)` bytes (a non-integer equivalent width, such as NUUQ's log2 N, packs at
  `ceil(b)` bits), and each level table another, `ceil(table bits/8)`.

Operand widths by multiplier kind (`quantizers.base.Multiplier`): an 'integer' operand is charged
its integer width (NUUQ its container bits b, Liss its M, uniform / fixed point / PACT their code
width); a 'significand_shift' operand (ESB) its k significant bits, the exponent add and the shift
of the product not charged; a 'shift' operand (PoT, log) the width of the code driving the shift,
sign included. So a shift is charged like a `c × m_a` multiplier with `c` the shifter's control
width: a barrel shifter over an `m_a`-bit operand is `c` stages of `m_a` muxes (the sign's
negation one of them), the same order as a `c × m_a` array multiplier. Each row also names the
kind, so tables can show which multiplies are shifts. Scales (one float or a requantization
multiplier per tensor or channel) are not counted.

Bits come from the plan: the kernel and bias quantizers give the weight and bias figures; a
layer's output is its `output` quantizer's, else the `act` (input) quantizer's of the layer called
next; its input is its `act` quantizer's, else the previous layer's output quantizer's. Anything
left unquantized counts as 32-bit float (stored and multiplied). The reference quantizes every
weight, bias and activation (the network's input image included) at 8 bits: 8-bit integer codes,
8×8 integer multipliers, no tables.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

from quantjax.intercept import LayerInfo, QuantPlan
from quantjax.quantizers.base import Multiplier, Quantizer

FLOAT_BITS = 32
REFERENCE_BITS = 8
TOTALS = ("memory_bits", "weight_memory_bits", "bias_memory_bits", "activation_memory_bits",
          "mult_cost", "bops", "param_bytes")
FLOAT_MULTIPLIER = Multiplier("float", FLOAT_BITS)


@dataclasses.dataclass(frozen=True)
class LayerBits:
  """The widths of one layer's tensors (32 = float).

  `weight`, `bias`, `input` and `output` are the bits stored per value (a table quantizer's index
  width); `*_table_bits` the level tables stored once for the layer's tensor; `*_multiplier` what
  the multiplier sees of that operand, where None means an integer of the stored width (float at
  32 bits), as for a plain code.
  """

  weight: float = FLOAT_BITS
  bias: float = FLOAT_BITS
  input: float = FLOAT_BITS
  output: float = FLOAT_BITS
  weight_table_bits: int = 0  # all of the kernel's level tables, in bits
  bias_table_bits: int = 0
  output_table_bits: int = 0  # the output activation's table (stored once, not per image)
  weight_multiplier: Multiplier | None = None
  input_multiplier: Multiplier | None = None
  output_multiplier: Multiplier | None = None


def _index_bits(q: Quantizer | None) -> float:
  return float(q.storage.index_bits) if q is not None else float(FLOAT_BITS)


def _table_bits(q: Quantizer | None, channels: int = 1) -> int:
  return q.storage.table_memory_bits(channels) if q is not None else 0


def _multiplier(q: Quantizer | None) -> Multiplier:
  return q.multiplier if q is not None else FLOAT_MULTIPLIER


def layer_bits(layers: Sequence[LayerInfo], plan: QuantPlan | None) -> list[LayerBits]:
  """Each layer's stored and multiplied widths under `plan`, in call order."""
  quants = [plan.get(layer.path) if plan else None for layer in layers]
  result = []
  for i, (layer, lq) in enumerate(zip(layers, quants, strict=True)):
    prev = quants[i - 1] if i > 0 else None
    nxt = quants[i + 1] if i + 1 < len(quants) else None
    if lq is not None and lq.act is not None:
      input_q = lq.act
    else:
      input_q = prev.output if prev is not None else None
    if lq is not None and lq.output is not None:
      output_q = lq.output
    else:
      output_q = nxt.act if nxt is not None else None
    weight_q = lq.weight if lq else None
    bias_q = lq.bias if lq else None
    result.append(LayerBits(
        weight=_index_bits(weight_q),
        bias=_index_bits(bias_q),
        input=_index_bits(input_q),
        output=_index_bits(output_q),
        weight_table_bits=_table_bits(weight_q, layer.kernel_shape[-1]),
        bias_table_bits=_table_bits(bias_q),
        output_table_bits=_table_bits(output_q),
        weight_multiplier=_multiplier(weight_q),
        input_multiplier=_multiplier(input_q),
        output_multiplier=_multiplier(output_q),
    ))
  return result


def _operand(multiplier: Multiplier | None, stored_bits: float) -> tuple[str, float]:
  """(kind, width) the multiplier sees: the contract's, or an integer of the stored width."""
  if multiplier is not None:
    return multiplier.kind, multiplier.operand_bits
  return ("float" if stored_bits >= FLOAT_BITS else "integer"), stored_bits


def _packed_bytes(count: int, bits: float) -> int:
  return math.ceil(count * math.ceil(bits) / 8)


def _layer_cost(layer: LayerInfo, bits: LayerBits) -> dict[str, Any]:
  out_hw = math.prod(layer.output_shape[1:-1])  # H_out·W_out for a conv, 1 for a dense layer
  num_outputs = math.prod(layer.output_shape[1:])  # activations per image
  macs = layer.macs
  bias_table = bits.bias_table_bits if layer.num_bias else 0
  weight_mem = bits.weight * layer.num_weights + bits.weight_table_bits
  bias_mem = bits.bias * layer.num_bias + bias_table
  act_mem = bits.output * num_outputs + bits.output_table_bits
  w_kind, w_op = _operand(bits.weight_multiplier, bits.weight)
  in_kind, in_op = _operand(bits.input_multiplier, bits.input)
  out_kind, out_op = _operand(bits.output_multiplier, bits.output)
  return {
      "layer": layer.path,
      "weight_bits": bits.weight,
      "bias_bits": bits.bias if layer.num_bias else 0,
      "input_bits": bits.input,
      "output_bits": bits.output,
      "weight_table_bits": bits.weight_table_bits,
      "bias_table_bits": bias_table,
      "output_table_bits": bits.output_table_bits,
      "weight_multiplier": w_kind,
      "weight_operand_bits": w_op,
      "input_multiplier": in_kind,
      "input_operand_bits": in_op,
      "output_multiplier": out_kind,
      "output_operand_bits": out_op,
      "num_weights": layer.num_weights,
      "num_bias": layer.num_bias,
      "num_outputs": num_outputs,
      "macs": macs,
      "weight_memory_bits": weight_mem,
      "bias_memory_bits": bias_mem,
      "activation_memory_bits": act_mem,
      "memory_bits": weight_mem + bias_mem + act_mem,
      "mult_cost": w_op * layer.num_weights * out_op * out_hw,
      "bops": macs * w_op * in_op,
      "param_bytes": (_packed_bytes(layer.num_weights, bits.weight)
                      + _packed_bytes(layer.num_bias, bits.bias)
                      + math.ceil(bits.weight_table_bits / 8) + math.ceil(bias_table / 8)),
  }


def cost_report(layers: Sequence[LayerInfo], plan: QuantPlan | None = None, *,
                bits: Sequence[LayerBits] | None = None) -> dict[str, Any]:
  """Per-layer costs, totals, the all-8-bit reference and the reduction against it.

  Args:
    layers: the model's layers in call order (`discover_layers`).
    plan: the quantization plan the widths are read from (None: float).
    bits: explicit per-layer widths instead of the plan's (e.g. a search's candidates).

  Returns:
    `{'layers': [...], 'total': {...}, 'reference_8bit': {...}, 'reduction_vs_8bit': {...}}`;
    a reduction is `1 - total/reference` (0.6 = 60 % cheaper than all-8-bit). Each layer row has
    the stored bits (`weight_bits`, ..., `*_table_bits`), the multiplier kind and operand width of
    the weight, input and output (`weight_multiplier`, `weight_operand_bits`, ...) and the costs.
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
