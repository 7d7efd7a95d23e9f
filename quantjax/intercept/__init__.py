"""Interception: applying per-layer quantizers to unmodified flax.linen models."""

from quantjax.intercept.interceptor import (
    QUANT_LOSSES,
    QUANT_STATE,
    make_interceptor,
    quantize,
    quantized_apply,
    quantized_init,
    quantizer_params,
)
from quantjax.intercept.layers import (
    FloatLayer,
    LayerInfo,
    discover_float_layers,
    discover_layers,
    module_path,
    sample_input,
)
from quantjax.intercept.plan import LayerQuant, QuantPlan, Rule, plan_from_config, resolve
from quantjax.intercept.table import format_plan, plan_rows

__all__ = [
    "QUANT_LOSSES",
    "QUANT_STATE",
    "FloatLayer",
    "LayerInfo",
    "LayerQuant",
    "QuantPlan",
    "Rule",
    "discover_float_layers",
    "discover_layers",
    "format_plan",
    "make_interceptor",
    "module_path",
    "plan_from_config",
    "plan_rows",
    "quantize",
    "quantized_apply",
    "quantized_init",
    "quantizer_params",
    "resolve",
    "sample_input",
]
