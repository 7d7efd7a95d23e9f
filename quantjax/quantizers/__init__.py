"""Quantizers: pure fake-quantization functions with explicit custom VJPs, registered by name.

Importing this package registers every built-in quantizer.
"""

from quantjax.quantizers import (  # noqa: F401  (register)
    esb,
    fixed_point,
    liss,
    log,
    nuuq,
    pact,
    uniform,
)
from quantjax.quantizers.base import MAX_BITS, MIN_BITS, ROLES, Multiplier, Quantizer, Storage
from quantjax.quantizers.codes import ActCodes, WeightCodes
from quantjax.quantizers.registry import from_dict, get, names, register

__all__ = ["MAX_BITS", "MIN_BITS", "ROLES", "ActCodes", "Multiplier", "Quantizer", "Storage",
           "WeightCodes", "from_dict", "get", "names", "register"]
