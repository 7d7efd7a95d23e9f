"""Interception: applying per-layer quantizers to unmodified flax.linen models."""

from quantjax.intercept.interceptor import (
    QUANT_LOSSES,
    QUANT_STATE,
    make_interceptor,
    quantize,
    quantized_apply,
    quantized_init,
)
from quantjax.intercept.layers import LayerInfo, discover_layers, module_path, sample_input
from quantjax.intercept.plan import LayerQuant, QuantPlan, Rule, plan_from_config, resolve

__all__ = [
    "QUANT_LOSSES",
    "QUANT_STATE",
    "LayerInfo",
    "LayerQuant",
    "QuantPlan",
    "Rule",
    "discover_layers",
    "make_interceptor",
    "module_path",
    "plan_from_config",
    "quantize",
    "quantized_apply",
    "quantized_init",
    "resolve",
    "sample_input",
]
