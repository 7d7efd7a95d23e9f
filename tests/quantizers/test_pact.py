"""PACT: clip and rounding by hand, the α gradient rule, initialisation, properties, interceptor."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from quantjax import intercept, quantizers
from quantjax.quantizers import pact


def _pact(**fields):
  return quantizers.from_dict({"name": "pact", **fields})


def _apply(q, x, alpha):
  return q.apply(jnp.asarray(x, jnp.float32), {"alpha": jnp.float32(alpha)}, {}, "act", True)[0]


def test_clip_and_round_by_hand():
  # α = 3, b = 2: step 1, codes 0..3; 0.5 and 2.5 round half to even.
  x = [-1.0, 0.0, 0.4, 0.5, 1.5, 2.5, 2.6, 3.0, 7.0]
  np.testing.assert_array_equal(_apply(_pact(bits=2), x, 3.0), [0, 0, 0, 0, 2, 2, 3, 3, 3])
  # α = 2, b = 3: step 2/7.
  out = _apply(_pact(bits=3), [0.2, 1.1, 5.0], 2.0)  # codes 0.7 -> 1, 3.85 -> 4, 7
  np.testing.assert_allclose(out, [2 / 7, 8 / 7, 2.0], rtol=1e-6)


def test_alpha_and_input_gradients_by_hand():
  # PACT: dQ/dx = 1 on [0, α), 0 elsewhere; dQ/dα = 1 where x >= α.
  q = _pact(bits=2)
  x = jnp.array([-1.0, 0.0, 1.2, 2.9, 3.0, 4.0, 9.0])
  upstream = jnp.arange(1.0, 8.0)
  loss = lambda v, a: jnp.sum(q.apply(v, {"alpha": a}, {}, "act", True)[0] * upstream)  # noqa: E731
  dx, dalpha = jax.grad(loss, argnums=(0, 1))(x, jnp.float32(3.0))
  np.testing.assert_array_equal(dx, [0, 2, 3, 4, 0, 0, 0])
  assert float(dalpha) == 5.0 + 6.0 + 7.0


def test_gradients_match_straight_through_reference_of_the_clip():
  # Inside [0, α) the input gradient is the STE reference x + stop_gradient(Q(x) - x); outside
  # it is zero. The α gradient equals that of the reference clip(x, 0, α) + sg(Q - clip).
  q = _pact(bits=3)
  x = jnp.array([-0.7, 0.1, 0.33, 1.0, 1.49, 1.51, 2.0, 4.0])
  alpha = jnp.float32(1.5)
  upstream = jnp.linspace(-1.0, 2.0, 8)
  fq = lambda v, a: q.apply(v, {"alpha": a}, {}, "act", True)[0]  # noqa: E731
  got_x, got_a = jax.grad(lambda v, a: jnp.sum(fq(v, a) * upstream), (0, 1))(x, alpha)
  ste = lambda v, a: v + jax.lax.stop_gradient(fq(v, a) - v)  # noqa: E731
  ref_x = jax.grad(lambda v: jnp.sum(ste(v, alpha) * upstream))(x)
  inside = (np.asarray(x) >= 0) & (np.asarray(x) < 1.5)
  np.testing.assert_array_equal(got_x, np.where(inside, ref_x, 0.0))
  clip_ref = lambda a: jnp.sum(  # noqa: E731
      (jnp.clip(x, 0.0, a) + jax.lax.stop_gradient(fq(x, a) - jnp.clip(x, 0.0, a))) * upstream)
  np.testing.assert_allclose(got_a, jax.grad(clip_ref)(alpha), rtol=1e-6)


def test_initial_alpha():
  x = jnp.linspace(0.0, 10.0, 1001)
  params, state = _pact(init_percentile=90.0).init(x, "act")
  np.testing.assert_allclose(params["alpha"], 9.0, rtol=1e-5)
  assert state == {}
  assert float(_pact(alpha_init=6.0).init(x, "act")[0]["alpha"]) == 6.0
  # An all-zero init batch has no positive percentile: fall back to 6 (ReLU6's clip).
  assert float(_pact().init(jnp.zeros((4, 3)), "act")[0]["alpha"]) == 6.0


def test_levels_and_negative_alpha():
  q = _pact(bits=2)
  np.testing.assert_allclose(q.levels({"alpha": jnp.float32(3.0)}, {}), [0, 1, 2, 3])
  # A step through zero cannot make the grid negative: α enters as |α|.
  np.testing.assert_array_equal(_apply(q, [1.0, 5.0], -3.0), [1.0, 3.0])


@pytest.mark.parametrize(
    ("fields", "match"),
    [({"bits": 1}, "bits=1 is out of range"),
     ({"alpha_init": 0.0}, "alpha_init=0.0"),
     ({"init_percentile": 0.0}, "init_percentile=0.0"),
     ({"signed": True}, "no field.*signed")],
)
def test_bad_configs_raise_one_line_errors(fields, match):
  with pytest.raises(ValueError, match=match) as e:
    _pact(**fields)
  assert "\n" not in str(e.value)


def test_weights_rejected():
  with pytest.raises(ValueError, match="activations only"):
    _pact().validate_role("weight")
  q = _pact(bits=4)
  assert isinstance(q, pact.PACT) and q.describe() == "pact4" and q.bits == 4 and q.qmax == 15


# -- properties ----------------------------------------------------------------------------------


@functools.partial(jax.jit, static_argnums=0)
def _quantize_twice(q, x, alpha):
  params = {"alpha": alpha}
  out = q.apply(x, params, {}, "act", False)[0]
  return out, q.apply(out, params, {}, "act", False)[0], q.levels(params, {})


@settings(max_examples=40, deadline=None)
@given(st.lists(st.floats(-20, 20, allow_nan=False, width=32), min_size=16, max_size=16),
       st.sampled_from([2, 3, 4, 8]), st.floats(0.0625, 15.0, width=32))
def test_properties(values, bits, alpha):
  x = jnp.asarray(values, jnp.float32)
  out, again, levels = map(np.asarray, _quantize_twice(_pact(bits=bits), x, jnp.float32(alpha)))
  order = np.argsort(np.asarray(x), kind="stable")
  assert np.all(np.diff(out[order]) >= 0)  # monotone non-decreasing
  assert len(np.unique(out)) <= 2**bits
  distance = np.abs(out[:, None] - levels[None, :]).min(axis=1)
  assert np.all(distance <= 1e-6 * alpha)  # on the level set
  np.testing.assert_array_equal(again, out)  # idempotent for a fixed α
  assert out.min() >= 0 and out.max() <= alpha * (1 + 1e-6)


# -- through the interceptor ---------------------------------------------------------------------

def test_through_the_interceptor(recorded_conv_dense):
  model, recorded = recorded_conv_dense
  x = jnp.asarray(np.abs(np.random.default_rng(2).normal(size=(4, 5, 5, 1))), jnp.float32)
  layers = intercept.discover_layers(model, x)
  plan = intercept.resolve(layers, weight=None, act={"name": "pact", "bits": 3,
                                                     "init_percentile": 90.0})
  variables = jax.jit(intercept.quantized_init(model, plan))(jax.random.key(1), x)
  assert "quant_state" not in variables  # α is a parameter; PACT has no state
  assert set(variables["params"]["fc"]) == {"kernel", "bias", "input_alpha"}

  @jax.jit
  def run(variables):
    def loss(params):
      recorded.clear()
      out = intercept.quantized_apply(model, plan, training=True)(
          {**variables, "params": params}, x)
      inputs = [lhs for lhs, _ in recorded]  # traced here, returned as outputs
      recorded.clear()
      return jnp.sum(out**2), inputs

    grads, inputs = jax.grad(loss, has_aux=True)(variables["params"])
    return inputs, grads

  inputs, grads = run(variables)
  for lhs, layer in zip(inputs, ("conv", "fc"), strict=True):
    alpha = float(variables["params"][layer]["input_alpha"])
    codes = np.asarray(lhs) / (alpha / 7)
    np.testing.assert_allclose(codes, np.round(codes), atol=1e-4)
    assert codes.min() >= 0 and np.round(codes).max() == 7  # the 90th percentile clips
  for layer in ("conv", "fc"):
    for name in ("kernel", "input_alpha"):
      g = np.asarray(grads[layer][name])
      assert np.all(np.isfinite(g)) and np.any(g != 0), f"{layer}/{name}"
