"""The interceptor: quantized conv/dense inside jit, variables, and gradients vs STE reference."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from quantjax import intercept, quantizers
from quantjax.quantizers import fixed_point


class TinyNet(nn.Module):
  @nn.compact
  def __call__(self, x, train: bool):  # x: [B, 6, 6, 1]
    x = nn.relu(nn.Conv(3, (3, 3), name="conv1")(x))
    x = nn.relu(nn.Conv(4, (3, 3), name="conv2")(x))
    x = x.reshape(x.shape[0], -1)
    return nn.Dense(2, name="fc")(x)


W4 = {"name": "uniform", "bits": 4, "scale_method": "pow2", "fractional_bits": 3}
A4 = {"name": "uniform", "bits": 4, "signed": False, "scale_method": "pow2", "fractional_bits": 2}


@pytest.fixture(scope="module")
def setup():
  model = TinyNet()
  x = jax.random.normal(jax.random.key(0), (2, 6, 6, 1))
  layers = intercept.discover_layers(model, x, train=False)
  plan = intercept.resolve(layers, weight=W4, act=A4, first_layer={"act": None})
  variables = intercept.quantized_init(model, plan)({"params": jax.random.key(1)}, x, train=False)
  return model, x, layers, plan, variables


def _fq(spec, v):
  q = quantizers.from_dict(spec)
  return q.apply(v, {}, {}, "weight", False)[0]


def _manual_forward(params, x, ste: bool):
  """The quantized TinyNet written by hand with lax ops (independent of the interceptor)."""
  def q(spec, v):
    out = _fq(spec, v)
    return v + jax.lax.stop_gradient(out - v) if ste else out

  dn = ("NHWC", "HWIO", "NHWC")
  h = jax.lax.conv_general_dilated(x, q(W4, params["conv1"]["kernel"]), (1, 1), "SAME",
                                   dimension_numbers=dn) + params["conv1"]["bias"]
  h = nn.relu(h)
  h = jax.lax.conv_general_dilated(q(A4, h), q(W4, params["conv2"]["kernel"]), (1, 1), "SAME",
                                   dimension_numbers=dn) + params["conv2"]["bias"]
  h = nn.relu(h).reshape(x.shape[0], -1)
  return q(A4, h) @ q(W4, params["fc"]["kernel"]) + params["fc"]["bias"]


def test_discovery_in_call_order(setup):
  _, _, layers, _, _ = setup
  assert [(lay.path, lay.kind) for lay in layers] == [("conv1", "conv"), ("conv2", "conv"),
                                                     ("fc", "dense")]
  assert layers[0].kernel_shape == (3, 3, 1, 3) and layers[2].kernel_shape == (144, 2)


def test_quantized_forward_equals_hand_written(setup):
  model, x, _, plan, variables = setup
  got = intercept.quantized_apply(model, plan, training=False)(variables, x, train=False)
  np.testing.assert_allclose(got, _manual_forward(variables["params"], x, ste=False), rtol=1e-5,
                             atol=1e-6)


def test_conv_and_dense_gradients_match_straight_through_reference(setup):
  model, x, _, plan, variables = setup
  upstream = jnp.array([[1.0, -2.0], [0.5, 3.0]])

  def loss_intercepted(params):
    out = intercept.quantized_apply(model, plan, training=False)(
        {**variables, "params": params}, x, train=False)
    return jnp.sum(out * upstream)

  def loss_reference(params):
    return jnp.sum(_manual_forward(params, x, ste=True) * upstream)

  got = jax.grad(loss_intercepted)(variables["params"])
  ref = jax.grad(loss_reference)(variables["params"])
  for layer in ("conv1", "conv2", "fc"):
    # The kernels here are well inside the range, so STE and clipped STE agree.
    assert float(jnp.abs(got[layer]["kernel"]).sum()) > 0, f"{layer} kernel gradient is zero"
    np.testing.assert_allclose(got[layer]["kernel"], ref[layer]["kernel"], rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(got[layer]["bias"], ref[layer]["bias"], rtol=1e-4, atol=1e-6)


def test_quantized_gradient_close_to_float_gradient_at_high_bits():
  model = TinyNet()
  x = jax.random.normal(jax.random.key(0), (2, 6, 6, 1))
  layers = intercept.discover_layers(model, x, train=False)
  w16 = {"name": "uniform", "bits": 16}
  plan = intercept.resolve(layers, weight=w16, act=None)
  params = model.init(jax.random.key(2), x, train=False)["params"]
  fq = jax.grad(lambda p: intercept.quantized_apply(model, plan, training=False)(
      {"params": p}, x, train=False).sum())(params)
  fl = jax.grad(lambda p: model.apply({"params": p}, x, train=False).sum())(params)
  for a, b in zip(jax.tree_util.tree_leaves(fq), jax.tree_util.tree_leaves(fl), strict=True):
    np.testing.assert_allclose(a, b, rtol=1e-2, atol=1e-4)


def test_interceptor_inside_jit_float_without_rules_quantized_with(setup):
  model, x, _, plan, variables = setup
  float_out = model.apply({"params": variables["params"]}, x, train=False)

  def make_step(p):
    return jax.jit(lambda v, inp: intercept.quantized_apply(model, p, training=False)(
        v, inp, train=False))

  out_float = make_step(intercept.QuantPlan())(variables, x)
  out_quant = make_step(plan)(variables, x)
  np.testing.assert_allclose(out_float, float_out, rtol=1e-6)
  assert not np.allclose(out_quant, float_out, atol=1e-4)
  np.testing.assert_allclose(out_quant, _manual_forward(variables["params"], x, False), rtol=1e-5,
                             atol=1e-6)


def test_interceptor_outside_jit_is_invisible_to_the_cache(setup):
  # Why quantized_apply enters the interceptor inside the traced function: a jitted float
  # function traced once is reused from jit's cache even when called under the interceptor.
  model, x, _, plan, variables = setup
  float_fn = jax.jit(lambda v, inp: model.apply(v, inp, train=False))
  first = float_fn({"params": variables["params"]}, x)
  with intercept.quantize(plan, training=False):
    cached = float_fn({"params": variables["params"]}, x)
  np.testing.assert_array_equal(first, cached)


def test_variables_live_beside_the_kernel():
  model = TinyNet()
  x = jnp.ones((2, 6, 6, 1))
  layers = intercept.discover_layers(model, x, train=False)
  lsq = {"name": "uniform", "bits": 4, "scale_method": "lsq"}
  act = {"name": "uniform", "bits": 4, "signed": False}
  plan = intercept.resolve(layers, weight=lsq, act=act, first_layer={"act": None})
  v = intercept.quantized_init(model, plan)({"params": jax.random.key(0)}, x, train=False)
  assert set(v["params"]["conv2"]) == {"kernel", "bias", "kernel_scale"}
  assert set(v["quant_state"]) == {"conv2", "fc"}
  assert set(v["quant_state"]["fc"]) == {"input_range_lo", "input_range_hi"}
  # Training updates the running range; evaluation leaves it.
  apply_train = intercept.quantized_apply(model, plan, training=True)
  _, upd = apply_train(v, 3 * x, train=True, mutable=["quant_state"])
  assert float(upd["quant_state"]["fc"]["input_range_hi"]) != float(
      v["quant_state"]["fc"]["input_range_hi"])
  apply_eval = intercept.quantized_apply(model, plan, training=False)
  _, same = apply_eval(v, 3 * x, train=False, mutable=["quant_state"])
  np.testing.assert_array_equal(same["quant_state"]["fc"]["input_range_hi"],
                                v["quant_state"]["fc"]["input_range_hi"])


def test_fixed_point_kernel_values_on_grid(setup):
  variables = setup[-1]
  kernel = variables["params"]["conv2"]["kernel"]
  q = np.asarray(fixed_point.fixed_point_quantize(kernel, 4, 3))
  codes = q * 8
  np.testing.assert_array_equal(codes, np.round(codes))
  assert np.abs(codes).max() <= 7
