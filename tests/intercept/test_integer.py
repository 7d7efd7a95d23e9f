"""Integer products in training: int8 operands, an int32 sum, the float product's gradient."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from quantjax import intercept, quantizers
from quantjax.intercept import integer
from quantjax.quantizers.base import IntegerGrid

DN = ("NHWC", "HWIO", "NHWC")


@pytest.mark.parametrize("spec, role", [
    ({"name": "uniform", "bits": 8, "granularity": "channel", "scale_method": "lsq"}, "weight"),
    ({"name": "uniform", "bits": 4, "granularity": "channel", "scale_method": "max"}, "weight"),
    ({"name": "uniform", "bits": 8, "signed": False, "scale_method": "lsq"}, "act"),
    ({"name": "uniform", "bits": 3, "signed": False, "scale_method": "max"}, "act"),
    ({"name": "uniform", "bits": 4, "scale_method": "pow2", "fractional_bits": 2}, "weight"),
    ({"name": "pact", "bits": 4}, "act"),
    ({"name": "nuuq", "num_levels": 4, "container_bits": 8, "recluster_every": 1}, "weight"),
    ({"name": "nuuq", "num_levels": 5, "container_bits": 6, "grid": "max"}, "weight"),
    ({"name": "liss", "bits": 3, "int_bits": 8}, "weight"),
    ({"name": "liss", "bits": 4, "int_bits": 8, "fit": "laplace"}, "act"),
    ({"name": "esb", "bits": 4, "significant_bits": 2, "granularity": "channel",
      "alpha": "learned"}, "weight"),
    ({"name": "esb", "bits": 4, "significant_bits": 2, "signed": False, "alpha": "lambda_std"},
     "act"),
    ({"name": "esb", "bits": 3, "significant_bits": 2, "alpha": "learned"}, "weight"),
])
@pytest.mark.parametrize("training", [False, True])
def test_the_output_is_the_grids_scale_times_integers_in_its_range(spec, role, training):
  q = quantizers.from_dict(spec)
  x = 3.0 * jax.random.normal(jax.random.key(0), (2, 5, 5, 6))
  if role == "act":
    x = jnp.abs(x)
  params, state = q.init(x, role)
  x = 30.0 * x  # beyond the initial range: some values clip
  if "step" in state:  # NUUQ: a re-clustering step, whose table (and step) fit this x
    state = {**state, "step": jnp.asarray(1, jnp.int32)}
  out = q.apply(x, params, state, role, training)[0]
  grid = q.integer_grid(x, params, state, role, training)
  v = np.asarray(out, np.float64) / np.asarray(grid.scale, np.float64)
  np.testing.assert_allclose(v, np.round(v), atol=1e-4)
  assert np.round(v).min() >= grid.lo and np.round(v).max() <= grid.hi
  if spec["name"] in ("uniform", "pact", "esb"):
    assert np.round(v).max() == grid.hi  # the clipped values reach the top code


def test_an_affine_grid_has_no_static_integer_range():
  q = quantizers.from_dict({"name": "uniform", "bits": 8, "symmetric": False})
  x = jnp.linspace(-1.0, 3.0, 16)
  params, state = q.init(x, "act")
  assert q.integer_grid(x, params, state, "act", False) is None


def _numpy_conv(x, w, stride, pad):
  """An independent reference: the integer convolution as explicit loops, in int64."""
  x = np.pad(x, ((0, 0), pad[0], pad[1], (0, 0)))
  kh, kw, _, cout = w.shape
  oh, ow = (x.shape[1] - kh) // stride + 1, (x.shape[2] - kw) // stride + 1
  out = np.zeros((x.shape[0], oh, ow, cout), np.int64)
  for i in range(oh):
    for j in range(ow):
      patch = x[:, i * stride:i * stride + kh, j * stride:j * stride + kw, :]
      out[:, i, j, :] = np.einsum("bhwc,hwco->bo", patch.astype(np.int64), w.astype(np.int64))
  return out


@pytest.mark.parametrize("lo, hi", [(0, 255), (0, 15), (-127, 127)])
def test_a_convolution_on_the_integers_equals_the_integer_reference(lo, hi):
  rng = np.random.default_rng(0)
  vx = rng.integers(lo, hi + 1, (2, 7, 7, 3))
  vx[0, 0, 0, :] = hi  # the extreme codes, next to the zero padding
  vw = rng.integers(-127, 128, (3, 3, 3, 4))
  sx, sw = 0.25, np.array([0.5, 0.125, 1.0, 2.0 ** -6])  # powers of two: every step exact
  x, w = jnp.asarray(vx * sx, jnp.float32), jnp.asarray(vw * sw, jnp.float32)
  conv = lambda a, b, **k: jax.lax.conv_general_dilated(  # noqa: E731
      a, b, (2, 2), ((1, 1), (1, 1)), dimension_numbers=DN, **k)
  got = integer.product(conv, x, w, IntegerGrid(jnp.float32(sx), lo, hi),
                        IntegerGrid(jnp.asarray(sw, jnp.float32), -127, 127))
  want = _numpy_conv(vx, vw, 2, ((1, 1), (1, 1))) * sx * sw
  np.testing.assert_array_equal(np.asarray(got, np.float64), want)
  assert "preferred_element_type=int32" in str(jax.make_jaxpr(
      lambda a, b: integer.product(conv, a, b, IntegerGrid(jnp.float32(sx), lo, hi),
                                   IntegerGrid(jnp.asarray(sw, jnp.float32), -127, 127)))(x, w))


def test_a_dense_product_with_unsigned_8_bit_inputs():
  rng = np.random.default_rng(1)
  vx, vw = rng.integers(0, 256, (5, 40)), rng.integers(-127, 128, (40, 3))
  x, w = jnp.asarray(vx * 0.5, jnp.float32), jnp.asarray(vw * 0.25, jnp.float32)
  dense = lambda a, b, **k: jax.lax.dot_general(a, b, (((1,), (0,)), ((), ())), **k)  # noqa
  got = integer.product(dense, x, w, IntegerGrid(jnp.float32(0.5), 0, 255),
                        IntegerGrid(jnp.float32(0.25), -127, 127))
  np.testing.assert_array_equal(np.asarray(got, np.float64), (vx @ vw) * 0.125)


def test_the_gradient_is_the_float_products():
  rng = np.random.default_rng(2)
  x = jnp.asarray(rng.integers(0, 256, (2, 6, 6, 3)) * 0.5, jnp.float32)
  w = jnp.asarray(rng.integers(-127, 128, (3, 3, 3, 4)) * 0.25, jnp.float32)
  upstream = jnp.asarray(rng.normal(size=(2, 6, 6, 4)), jnp.float32)
  conv = lambda a, b, **k: jax.lax.conv_general_dilated(  # noqa: E731
      a, b, (1, 1), "SAME", dimension_numbers=DN, **k)
  grids = IntegerGrid(jnp.float32(0.5), 0, 255), IntegerGrid(jnp.float32(0.25), -127, 127)
  got = jax.grad(lambda a, b: jnp.sum(integer.product(conv, a, b, *grids) * upstream),
                 argnums=(0, 1))(x, w)
  want = jax.grad(lambda a, b: jnp.sum(conv(a, b) * upstream), argnums=(0, 1))(x, w)
  for g, r in zip(got, want, strict=True):
    np.testing.assert_allclose(g, r, rtol=1e-6, atol=1e-5)


def _grid(lo, hi, scale=1.0):
  return IntegerGrid(jnp.asarray(scale, jnp.float32), lo, hi)


def test_which_layers_take_the_integer_product():
  w8, a8 = _grid(-127, 127, np.ones(4)), _grid(0, 255)
  assert integer.eligible("on", a8, w8, (3, 3, 2, 4))
  # 'auto': on a CPU, from 32 input channels (or features) on, where int8 kernels are faster.
  cpu = jax.default_backend() == "cpu"
  assert integer.eligible("auto", a8, w8, (3, 3, 32, 4)) == cpu
  assert integer.eligible("auto", a8, w8, (400, 4)) == cpu
  assert not integer.eligible("auto", a8, w8, (3, 3, 31, 4))
  assert not integer.eligible("auto", a8, w8, (16, 4))
  assert not integer.eligible("off", a8, w8, (3, 3, 2, 4))
  assert not integer.eligible("on", None, w8, (3, 3, 2, 4))  # a float input
  assert not integer.eligible("on", _grid(0, 511), w8, (3, 3, 2, 4))  # 9-bit activations
  assert not integer.eligible("on", a8, _grid(0, 255, np.ones(4)), (3, 3, 2, 4))  # unsigned w
  assert not integer.eligible("on", _grid(0, 255, np.ones(2)), w8, (3, 3, 2, 4))  # per channel
  # 66,311 terms of 255·127 still fit an int32 sum; one more might not.
  assert integer.eligible("on", a8, w8, (66311, 4))
  assert not integer.eligible("on", a8, w8, (66312, 4))


class _Net(nn.Module):
  @nn.compact
  def __call__(self, x, train: bool):
    x = nn.relu(nn.Conv(4, (3, 3), strides=(2, 2), name="conv1")(x))
    return nn.Dense(3, name="fc")(x.reshape(x.shape[0], -1))


@pytest.mark.parametrize("mode, integer_ops", [("on", True), ("off", False)])
def test_the_plan_decides_and_the_network_agrees_with_the_float_products(mode, integer_ops):
  model, x = _Net(), jax.random.normal(jax.random.key(0), (2, 8, 8, 3))
  layers = intercept.discover_layers(model, x, train=False)
  specs = dict(weight={"name": "uniform", "bits": 8, "granularity": "channel",
                       "scale_method": "lsq"},
               act={"name": "uniform", "bits": 8, "signed": False, "scale_method": "lsq"},
               first_layer={"act": {"signed": True}})
  plan = intercept.resolve(layers, **specs, integer_products=mode)
  floats = intercept.resolve(layers, **specs, integer_products="off")
  variables = intercept.quantized_init(model, plan)({"params": jax.random.key(1)}, x,
                                                    train=False)

  def run(p):
    return lambda params: intercept.quantized_apply(model, p, training=False)(
        {**variables, "params": params}, x, train=False)

  jaxpr = str(jax.make_jaxpr(run(plan))(variables["params"]))
  assert ("preferred_element_type=int32" in jaxpr) == integer_ops
  np.testing.assert_allclose(run(plan)(variables["params"]), run(floats)(variables["params"]),
                             rtol=1e-5, atol=1e-5)
  # The last layer's gradients (its output is not quantized again) are the float product's.
  got = jax.grad(lambda p: run(plan)(p).sum())(variables["params"])["fc"]
  want = jax.grad(lambda p: run(floats)(p).sum())(variables["params"])["fc"]
  for g, r in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(want), strict=True):
    np.testing.assert_allclose(g, r, rtol=1e-5, atol=1e-6)


def test_an_unknown_mode_is_one_line_listing_the_valid_ones():
  with pytest.raises(ValueError, match=r"^quant.integer_products='fast' is not valid; choose one "
                                       r"of auto, on, off$"):
    intercept.resolve([], weight=None, act=None, integer_products="fast")


def test_a_modules_own_primitive_keeps_its_float_operands():
  seen = []

  def own_conv(lhs, rhs, *a, **kw):
    seen.append((lhs.dtype, rhs.dtype))
    return jax.lax.conv_general_dilated(lhs, rhs, *a, **kw)

  class Net(nn.Module):
    @nn.compact
    def __call__(self, x, train: bool):
      x = nn.relu(nn.Conv(4, (3, 3), name="conv0")(x))
      return nn.Conv(2, (3, 3), name="conv1", conv_general_dilated=own_conv)(x)

  model, x = Net(), jax.random.normal(jax.random.key(0), (2, 6, 6, 1))
  plan = intercept.resolve(intercept.discover_layers(model, x, train=False),
                           weight={"name": "uniform", "bits": 8},
                           act={"name": "uniform", "bits": 8, "signed": False},
                           first_layer={"act": None}, integer_products="on")
  variables = intercept.quantized_init(model, plan)({"params": jax.random.key(1)}, x, train=False)
  seen.clear()
  intercept.quantized_apply(model, plan, training=False)(variables, x, train=False)
  assert seen == [(jnp.float32, jnp.float32)]
