"""Bias and output quantizers of LayerQuant: applied by the interceptor, named bias_*/output_*."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from quantjax import intercept
from quantjax.quantizers.fixed_point import fixed_point_quantize


class ConvDense(nn.Module):
  @nn.compact
  def __call__(self, x, train: bool):  # x: [B, 5, 5, 1]
    del train
    x = nn.relu(nn.Conv(3, (3, 3), name="conv")(x))
    return nn.Dense(2, name="fc")(x.reshape(x.shape[0], -1))


BIAS = {"name": "fixed_point", "bits": 4, "fractional_bits": 2}
OUT = {"name": "fixed_point", "bits": 5, "fractional_bits": 1}


@pytest.fixture(scope="module")
def setup():
  model = ConvDense()
  x = jax.random.normal(jax.random.key(0), (2, 5, 5, 1))
  layers = intercept.discover_layers(model, x, train=False)
  variables = model.init({"params": jax.random.key(1)}, x, train=False)
  # Biases large enough that quantizing them changes them.
  variables = jax.tree_util.tree_map_with_path(
      lambda p, v: v + 0.37 if "bias" in jax.tree_util.keystr(p) else v, variables)
  return model, x, layers, variables


def _manual(params, x):
  q_b = lambda v: fixed_point_quantize(v, 4, 2)  # noqa: E731
  q_o = lambda v: fixed_point_quantize(v, 5, 1)  # noqa: E731
  dn = ("NHWC", "HWIO", "NHWC")
  h = jax.lax.conv_general_dilated(x, params["conv"]["kernel"], (1, 1), "SAME",
                                   dimension_numbers=dn) + q_b(params["conv"]["bias"])
  h = nn.relu(q_o(h)).reshape(x.shape[0], -1)
  return q_o(h @ params["fc"]["kernel"] + q_b(params["fc"]["bias"]))


def test_bias_and_output_match_hand_written_forward(setup):
  model, x, layers, variables = setup
  plan = intercept.resolve(layers, weight=None, act=None, bias=BIAS, output=OUT)
  created = intercept.quantized_apply(model, plan, training=False)(
      variables, x, train=False, mutable=["quant_state"])[1]
  assert set(created["quant_state"]["conv"]) == {
      "bias_bits", "bias_fractional_bits", "output_bits", "output_fractional_bits"}
  full = {**variables, **created}
  out = jax.jit(intercept.quantized_apply(model, plan, training=False))(full, x, train=False)
  np.testing.assert_allclose(out, _manual(variables["params"], x), atol=1e-5)
  # The output quantizer's grid: every logit is a multiple of 2^-1, at most 15·2^-1.
  assert np.all(np.abs(np.asarray(out) * 2 - np.round(np.asarray(out) * 2)) < 1e-5)


def test_output_quantizer_commutes_with_relu():
  y = jnp.linspace(-3, 3, 41)
  np.testing.assert_array_equal(fixed_point_quantize(jax.nn.relu(y), 4, 2),
                                jax.nn.relu(fixed_point_quantize(y, 4, 2)))


def test_plan_config_keys_and_defaults(setup):
  _, _, layers, _ = setup
  plan = intercept.plan_from_config(
      {"weight": {"name": "uniform", "bits": 4}, "act": None,
       "rules": [{"pattern": "fc", "bias": BIAS, "output": OUT}]}, layers)
  assert plan.get("conv").bias is None and plan.get("conv").output is None
  assert plan.get("fc").bias.bits == 4 and plan.get("fc").output.bits == 5
  # A plan with only the old keys is unchanged: bias/output stay float.
  plan = intercept.resolve(layers, weight={"name": "uniform", "bits": 4}, act=None)
  assert all(lq.bias is None and lq.output is None for _, lq in plan.layers)


def test_bad_bias_spec_is_named():
  with pytest.raises(ValueError, match="quant.bias"):
    intercept.plan.check_quant_config({"weight": None, "bias": {"name": "fixed_point", "bits": 0}})
