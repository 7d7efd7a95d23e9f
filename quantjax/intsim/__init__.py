"""Integer emulation of a fixed-point accelerator running an exported graph (jax.lax ints)."""

from quantjax.intsim.accelerator import Accelerator
from quantjax.intsim.bounds import decode_weight
from quantjax.intsim.emulator import Emulator

__all__ = ["Accelerator", "Emulator", "decode_weight"]
