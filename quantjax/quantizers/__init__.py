"""Quantizers: pure fake-quantization functions with explicit custom VJPs, registered by name.

Importing this package registers every built-in quantizer.
"""

from quantjax.quantizers import esb, liss, log, nuuq, pact, uniform  # noqa: F401  (register)
from quantjax.quantizers.base import MAX_BITS, MIN_BITS, ROLES, Quantizer
from quantjax.quantizers.registry import from_dict, get, names, register

__all__ = ["MAX_BITS", "MIN_BITS", "ROLES", "Quantizer", "from_dict", "get", "names", "register"]
