"""Post-training quantization: calibration, SQNR, Goyal et al.'s fixed-point search and MXQN."""

from quantjax.ptq.run import METHODS, run

__all__ = ["METHODS", "run"]
