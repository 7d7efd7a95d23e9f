"""Liss et al.: k-quantile levels, one integer scale per tensor, running fits, noise, gradients."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from quantjax import intercept, quantizers
from quantjax.quantizers import liss


def _liss(**fields):
  return quantizers.from_dict({"name": "liss", **fields})


def _snap(levels, int_bits, signed):
  """Hand reference of the integer snapping: Δ from the largest |level|, n = round(level/Δ)."""
  nmax = 2 ** (int_bits - 1) - 1 if signed else 2**int_bits - 1
  delta = np.max(np.abs(levels)) / nmax
  return delta, np.round(np.asarray(levels) / delta)


_RNG = np.random.default_rng(0)
_HALF = np.abs(_RNG.normal(0.0, 0.2, 500))
_SYMMETRIC = np.concatenate([_HALF, -_HALF]).astype(np.float32)  # mean exactly 0
_RELU = np.maximum(_RNG.normal(0.3, 1.0, 1000), 0.0).astype(np.float32)


@functools.partial(jax.jit, static_argnums=(0, 1))
def _integer_table(q, role, x):
  _, state = q.init(x, role)
  delta, n = q.integer_levels({}, state, x, role=role)
  return delta, n, q.levels({}, state, x, role=role)


def test_gaussian_two_bit_levels_by_hand():
  # The level of each of the 4 equal-probability bins is its median: norm.ppf at (i + 1/2)/4.
  sigma = float(np.std(_SYMMETRIC.astype(np.float64)))
  ppf = stats.norm.ppf([1 / 8, 3 / 8, 5 / 8, 7 / 8])  # ±0.3186, ±1.1503
  delta, n, levels = _integer_table(_liss(bits=2, int_bits=8), "weight", jnp.asarray(_SYMMETRIC))
  # n = round(±0.3186/1.1503 · 127) = round(±35.18): the table is [-127, -35, 35, 127].
  np.testing.assert_array_equal(n, [-127, -35, 35, 127])
  np.testing.assert_allclose(delta, sigma * ppf[-1] / 127, rtol=1e-5)
  np.testing.assert_allclose(levels, sigma * ppf[-1] / 127 * np.array([-127, -35, 35, 127]),
                             rtol=1e-5)


@pytest.mark.parametrize("fit", ["gaussian", "laplace"])
@pytest.mark.parametrize("signed", [True, False])
def test_k_quantile_levels_match_scipy(fit, signed):
  x = (_RNG.normal(0.05, 0.3, 2000) if signed else _RELU).astype(np.float32)
  x64 = x.astype(np.float64)
  if signed:
    p = (np.arange(8) + 0.5) / 8
    if fit == "gaussian":
      raw = stats.norm.ppf(p, loc=x64.mean(), scale=x64.std())
    else:
      raw = stats.laplace.ppf(p, loc=x64.mean(), scale=np.mean(np.abs(x64 - x64.mean())))
  else:
    positive = x64[x64 > 0]
    p = (np.arange(7) + 0.5) / 7
    if fit == "gaussian":
      raw = stats.halfnorm.ppf(p, scale=np.sqrt(np.mean(positive**2)))
    else:
      raw = stats.expon.ppf(p, scale=positive.mean())
    raw = np.concatenate([[0.0], raw])
  q = _liss(bits=3, int_bits=8, fit=fit, signed=signed)
  # As an activation: the fit is the state set by init; as a weight it is re-fitted from x.
  role = "weight" if signed else "act"
  delta, n, _ = _integer_table(q, role, jnp.asarray(x))
  ref_delta, ref_n = _snap(raw, 8, signed)
  np.testing.assert_allclose(delta, ref_delta, rtol=1e-4)
  np.testing.assert_array_equal(n, ref_n)


@pytest.mark.parametrize(("bits", "int_bits", "fit"), [
    (2, 3, "kmeans"), (3, 8, "laplace"), (4, 6, "laplace"), (6, 8, "gaussian")])
def test_levels_are_integer_multiples_of_one_scale(bits, int_bits, fit):
  q = _liss(bits=bits, int_bits=int_bits, fit=fit)
  for role, x in (("weight", _SYMMETRIC), ("act", _RELU)):
    delta, n, levels = map(np.asarray, _integer_table(q, role, jnp.asarray(x)))
    signed = role == "weight"
    nmax = 2 ** (int_bits - 1) - 1 if signed else 2**int_bits - 1
    assert n.shape == (2**bits,) and np.all(np.diff(n) >= 0)
    assert np.abs(n).max() == nmax  # the largest |level| maps to the largest code
    assert np.abs(n).max() < 2 ** (int_bits - (1 if signed else 0))
    if not signed:
      assert n[0] == 0 and n.min() >= 0  # post-ReLU: level 0 kept, unsigned codes
    np.testing.assert_array_equal(levels, np.float32(delta) * n.astype(np.float32))


def test_collisions_are_merged_when_m_is_close_to_b():
  # Laplace, b=4, M=5: the two innermost levels ±0.0645·s are ±0.35 codes: both round to 0.
  q = _liss(bits=4, int_bits=5, fit="laplace")
  _, n, _ = map(np.asarray, _integer_table(q, "weight", jnp.asarray(_SYMMETRIC)))
  np.testing.assert_array_equal(n, [-15, -9, -6, -4, -3, -2, -1, 0, 0, 1, 2, 3, 4, 6, 9, 15])
  out = np.asarray(_quantize_twice(q, jnp.asarray(_SYMMETRIC))[0])
  assert len(np.unique(out)) == 15


def test_activation_fit_is_a_moving_average_updated_only_in_training():
  q = _liss(bits=2, momentum=0.5)
  a, b = jnp.array([0.0, 1.0, 0.0, 3.0]), jnp.array([0.0, 0.0, 2.0, 4.0])

  @jax.jit
  def run():
    _, state = q.init(a, "act")  # half-normal scale sqrt(E[x²|x>0]): sqrt(5)
    out, trained = q.apply(b, {}, state, "act", True)
    return state, out, trained, q.levels({}, trained, role="act")

  state, out, trained, levels = run()
  np.testing.assert_allclose(state["scale"], np.sqrt(5.0), rtol=1e-6)
  np.testing.assert_allclose(trained["scale"], 0.5 * (np.sqrt(5.0) + np.sqrt(10.0)), rtol=1e-6)
  assert set(np.unique(np.asarray(out))) <= set(np.asarray(levels))
  assert q.apply(b, {}, state, "act", False)[1] is state


@functools.partial(jax.jit, static_argnums=0)
def _train_step(q, w, state):
  return q.apply(w, {}, state, "weight", True)[1]


def test_kmeans_centres_are_refitted_every_k_steps():
  q = _liss(bits=2, fit="kmeans", recluster_every=2)
  w0 = jnp.asarray(_SYMMETRIC)
  w1 = 2.0 * w0 + 0.1
  _, state = q.init(w0, "weight")
  fit0, fit1 = q.kmeans_levels(w0, True), q.kmeans_levels(w1, True)
  history = []
  for _ in range(3):
    state = _train_step(q, w1, state)
    history.append(np.asarray(state["centres"]))
  np.testing.assert_array_equal(history[0], fit0)  # counter 0
  np.testing.assert_array_equal(history[1], fit0)  # counter 1
  np.testing.assert_array_equal(history[2], fit1)  # counter 2 = K: re-fitted
  assert int(state["step"]) == 3


@functools.partial(jax.jit, static_argnums=0)
def _noise_run(q, w):
  """Init; two noisy training calls; the training gradient; an evaluation call."""
  _, state = q.init(w, "weight")

  def loss(v):
    noisy, trained = q.apply(v, {}, state, "weight", True)
    return jnp.sum(noisy * 3.0), (noisy, trained)

  grad, (noisy, trained) = jax.grad(loss, has_aux=True)(w)
  again, _ = q.apply(w, {}, trained, "weight", True)
  out, _ = q.apply(w, {}, state, "weight", False)
  return state, q.levels({}, state, w), noisy, trained, again, grad, out


def test_noise_injection_in_training_only():
  q = _liss(bits=2, noise=True, seed=3)
  w = jnp.asarray(_SYMMETRIC[:64])
  state, levels, noisy, trained, again, grad, out = _noise_run(q, w)
  levels = np.asarray(levels)
  # Uniform noise of the local bin width: |noisy - w| <= width/2, bins between level midpoints.
  edges = np.concatenate([[1.5 * levels[0] - 0.5 * levels[1]], (levels[1:] + levels[:-1]) / 2,
                          [1.5 * levels[-1] - 0.5 * levels[-2]]])
  idx = np.searchsorted(edges[1:-1], np.asarray(w), side="left")
  width = edges[idx + 1] - edges[idx]
  err = np.asarray(noisy) - np.asarray(w)
  assert np.all(np.abs(err) <= width / 2 + 1e-7)
  assert np.std(err / width) > 0.2  # U[-1/2, 1/2] has std 0.29: it is noise, not zero
  assert not np.array_equal(trained["noise_key"], state["noise_key"])
  assert not np.allclose(again, noisy)  # a fresh draw on the next step
  # Straight-through gradient; evaluation quantizes onto the same integer table.
  np.testing.assert_array_equal(grad, np.full(w.shape, 3.0))
  assert set(np.unique(np.asarray(out))) <= set(levels)
  assert q.apply(w, {}, state, "weight", False)[1] is state


@pytest.mark.parametrize("estimator", ["ste", "clipped_ste"])
def test_gradient_matches_straight_through_reference(estimator):
  q = _liss(bits=2, estimator=estimator)
  w = jnp.asarray(_SYMMETRIC[::50])
  upstream = jnp.arange(1.0, w.size + 1.0)
  fq = lambda v: q.apply(v, {}, {}, "weight", True)[0]  # noqa: E731
  got, ref = jax.jit(lambda v: (
      jax.grad(lambda u: jnp.sum(fq(u) * upstream))(v),
      jax.grad(lambda u: jnp.sum((u + jax.lax.stop_gradient(fq(u) - u)) * upstream))(v)))(w)
  if estimator == "ste":
    np.testing.assert_array_equal(got, ref)
  else:
    levels = np.asarray(q.levels({}, {}, w))
    inside = (np.asarray(w) >= levels[0]) & (np.asarray(w) <= levels[-1])
    assert not inside.all()
    np.testing.assert_array_equal(got, np.where(inside, ref, 0.0))


@pytest.mark.parametrize(
    ("fields", "match"),
    [({"bits": 9}, "bits=9 is out of range"),
     ({"bits": 4, "int_bits": 4}, "int_bits=4 is out of range; valid: integers 5 to 16"),
     ({"fit": "cauchy"}, "fit='cauchy'.*gaussian, laplace, kmeans"),
     ({"momentum": 1.0}, "momentum=1.0"),
     ({"signed": "yes"}, "signed='yes'")],
)
def test_bad_configs_raise_one_line_errors(fields, match):
  with pytest.raises(ValueError, match=match) as e:
    _liss(**fields)
  assert "\n" not in str(e.value)


def test_describe_and_bits():
  q = _liss(bits=3, int_bits=8, fit="laplace", noise=True)
  assert q.bits == 3 and q.num_levels == 8 and q.multiplier_bits == 8
  assert q.describe() == "liss3/M8/laplace+noise"


# -- properties ----------------------------------------------------------------------------------


@functools.partial(jax.jit, static_argnums=0)
def _quantize_twice(q, w):
  """Q(w) with levels fitted on w, Q(Q(w)) with those levels frozen (in the state for k-means)."""
  _, state = q.init(w, "weight")
  out = q.apply(w, {}, state, "weight", False)[0]
  levels = q.levels({}, state, w)
  if q.fit == "kmeans":
    again = q.apply(out, {}, state, "weight", False)[0]
  else:
    again = liss.snap_to_levels(out, levels, "ste")
  return out, again, levels


@settings(max_examples=25, deadline=None)
@given(st.lists(st.floats(-4, 4, allow_nan=False, width=32), min_size=24, max_size=24),
       st.sampled_from([(2, 8, "gaussian"), (3, 6, "laplace"), (4, 8, "kmeans")]))
def test_properties(values, config):
  bits, int_bits, fit = config
  q = _liss(bits=bits, int_bits=int_bits, fit=fit)
  w = jnp.asarray(values, jnp.float32)
  out, again, levels = map(np.asarray, _quantize_twice(q, w))
  order = np.argsort(np.asarray(w), kind="stable")
  assert np.all(np.diff(out[order]) >= 0)  # monotone non-decreasing
  assert set(np.unique(out)) <= set(levels)  # on the level set
  assert len(np.unique(out)) <= 2**bits
  np.testing.assert_array_equal(again, out)  # idempotent with the levels frozen


# -- through the interceptor ---------------------------------------------------------------------

def test_through_the_interceptor(recorded_conv_dense):
  model, recorded = recorded_conv_dense
  x = jnp.asarray(np.random.default_rng(1).normal(size=(4, 5, 5, 1)), jnp.float32)
  layers = intercept.discover_layers(model, x)
  weight = {"name": "liss", "bits": 2, "fit": "laplace"}
  act = {"name": "liss", "bits": 2, "fit": "gaussian"}
  # The image input is signed; the dense input is post-ReLU (unsigned, the default).
  plan = intercept.resolve(layers, weight=weight, act=act, first_layer={"act": {"signed": True}})
  variables = jax.jit(intercept.quantized_init(model, plan))(jax.random.key(1), x)
  qs = variables["quant_state"]
  assert set(qs["fc"]) == {"input_loc", "input_scale"}  # weight levels are re-fitted per call

  def level_sets(variables, layer):
    lq, state = plan.get(layer), variables["quant_state"][layer]
    return (lq.weight.levels({}, {}, variables["params"][layer]["kernel"], role="weight"),
            lq.act.levels({}, {"loc": state["input_loc"], "scale": state["input_scale"]},
                          role="act"))

  @jax.jit
  def run(variables):
    recorded.clear()
    _, evaluated = intercept.quantized_apply(model, plan, training=False)(
        variables, x, mutable=["quant_state"])
    operands = list(recorded)  # traced here, returned as outputs
    recorded.clear()
    levels = [level_sets(variables, layer) for layer in ("conv", "fc")]

    def loss(params):  # as in the train step, on a different batch
      out, updates = intercept.quantized_apply(model, plan, training=True)(
          {**variables, "params": params}, 2.0 * x, mutable=["quant_state"])
      return jnp.sum(out**2), updates

    grads, trained = jax.grad(loss, has_aux=True)(variables["params"])
    return operands, levels, grads, trained, evaluated

  operands, levels, grads, trained, evaluated = run(variables)
  for (lhs, kernel), (w_levels, a_levels) in zip(operands, levels, strict=True):
    assert set(np.unique(np.asarray(kernel))) <= set(np.asarray(w_levels))
    assert set(np.unique(np.asarray(lhs))) <= set(np.asarray(a_levels))
    assert len(np.unique(np.asarray(kernel))) <= 4 and len(np.unique(np.asarray(lhs))) <= 4
  assert np.asarray(operands[0][0]).min() < 0  # the signed image input
  assert np.asarray(operands[1][0]).min() == 0.0  # post-ReLU input: zeros stay exactly zero
  for layer in ("conv", "fc"):
    assert np.all(np.isfinite(grads[layer]["kernel"])) and np.any(grads[layer]["kernel"] != 0)
  # Training on a different batch moves the activation fit; evaluation leaves it as it was.
  new = trained["quant_state"]
  assert not np.array_equal(new["fc"]["input_scale"], qs["fc"]["input_scale"])
  assert not np.array_equal(new["conv"]["input_loc"], qs["conv"]["input_loc"])
  jax.tree.map(np.testing.assert_array_equal, evaluated["quant_state"], qs)
