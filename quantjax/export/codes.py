"""Integer codes of one quantized tensor, asked of the quantizer through its contract.

Every quantizer of the project represents a value as `scale · v` with `v` an integer (per tensor,
or per output channel for weights). The quantizer itself says how (`Quantizer.weight_codes`,
`Quantizer.act_codes`), and `quantjax.quantizers.codes` defines the objects returned and the
stored layouts with their one decode rule. This module is what the export reads: thin wrappers
kept for its callers, and the split of a layer's variables into a quantizer's params and state.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from quantjax.quantizers.base import Quantizer
from quantjax.quantizers.codes import (  # noqa: F401  (re-exported for the export's callers)
  ActCodes,
  WeightCodes,
  decode_float,
  encode_float,
  int_bits,
)


def layer_quantizer_vars(layer_vars: dict[str, Any], prefix: str) -> tuple[dict, dict]:
  """(params, state) of the quantizer named by `prefix` ('kernel', 'input', 'bias', 'output')."""
  cut = len(prefix) + 1
  params = {
    k[cut:]: v for k, v in layer_vars.get("params", {}).items() if k.startswith(prefix + "_")
  }
  state = {
    k[cut:]: v for k, v in layer_vars.get("quant_state", {}).items() if k.startswith(prefix + "_")
  }
  return params, state


def weight_codes(q: Quantizer, kernel: np.ndarray, params: dict, state: dict) -> WeightCodes:
  """The integer form of `kernel` under quantizer `q` (its trained params and state).

  Raises:
    ValueError: (one line) the quantizer or its setting has no exact integer form.
  """
  return q.weight_codes(kernel, params, state)


def act_codes(q: Quantizer, params: dict, state: dict) -> ActCodes:
  """The integer codes a layer-input (or layer-output) quantizer produces.

  Raises:
    ValueError: (one line) the quantizer or its setting has no exact integer form.
  """
  return q.act_codes(params, state)


def esb_encode(mag: np.ndarray, mantissa_bits: int) -> tuple[np.ndarray, np.ndarray]:
  """(exponent field, mantissa) of ESB magnitudes `v = q·2^L` (IEEE-like, with denormals)."""
  return encode_float(mag, mantissa_bits)


def esb_decode(exp_field: np.ndarray, mant: np.ndarray, mantissa_bits: int) -> np.ndarray:
  """Magnitudes `v` from ESB fields: mant (f = 0) or (2^L + mant) << (f - 1)."""
  return decode_float(np.asarray(exp_field, np.int64), np.asarray(mant, np.int64), mantissa_bits)


def fake_quant_act(q: Quantizer, params: dict, state: dict, x: np.ndarray) -> np.ndarray:
  """The quantizer's own (fake-quant) output for an activation, for checks."""
  return np.asarray(q.fake_quant(x, params, state, "act"))
