"""Cost model of a quantized network: memory, multiplication cost, bit operations, packed bytes."""

from quantjax.cost.model import REFERENCE_BITS, LayerBits, cost_report, layer_bits

__all__ = ["REFERENCE_BITS", "LayerBits", "cost_report", "layer_bits"]
