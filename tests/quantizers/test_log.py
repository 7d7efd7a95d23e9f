"""PoT ('pot') and logarithmic ('log'): levels, rounding, full scale, gradients, properties."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from quantjax import intercept, quantizers
from quantjax.quantizers import log


def _q(name="log", **fields):
  return quantizers.from_dict({"name": name, **fields})


@functools.partial(jax.jit, static_argnums=0)
def _apply_act(q, x, full_scale):
  """Quantizes x as an activation whose moving-average full scale is `full_scale` (eval)."""
  return q.apply(x, {}, {"full_scale": full_scale}, "act", False)[0]


def _act(q, x, full_scale=1.0):
  x = np.asarray(x, np.float32).ravel()
  size = max(64, 1 << (len(x) - 1).bit_length())  # padded: one compile per config
  out = _apply_act(q, jnp.asarray(np.pad(x, (0, size - len(x)))), jnp.float32(full_scale))
  return np.asarray(out)[: len(x)]


@functools.partial(jax.jit, static_argnums=0)
def _weight_and_levels(q, w):
  return q.apply(w, {}, {}, "weight", False)[0], q.levels({}, {}, w)


# -- the level sets ------------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "bits", "m", "signed", "exponents"), [
    ("pot", 3, 1, True, [-2, -1, 0]),  # 2^(b-1) - 1 = 3 exponents (METHODS.md's PoT baseline)
    ("pot", 4, 1, True, range(-6, 1)),
    ("pot", 3, 1, False, range(-6, 1)),  # unsigned: 2^b - 1 = 7 exponents
    ("log", 3, 2, True, [-2, -1, 0]),  # base √2: 1/2, 1/√2, 1
    ("log", 4, 2, True, range(-6, 1)),
    ("log", 3, 2, False, range(-6, 1)),
    ("log", 4, 4, True, range(-6, 1)),  # base 2^(1/4)
    ("log", 2, 4, False, [-2, -1, 0]),
])
def test_levels(name, bits, m, signed, exponents):
  q = _q(name, bits=bits, base_root=m, signed=signed)
  positive = 2.0 ** (np.asarray(list(exponents), np.float64) / m)  # full scale 1: K = 0
  expected = np.concatenate([-positive[::-1], [0.0], positive]) if signed else np.concatenate(
      [[0.0], positive])
  levels = np.asarray(q.levels({}, {"full_scale": jnp.float32(1.0)}, role="act"))
  np.testing.assert_allclose(levels, expected, rtol=1e-6)
  assert len(levels) == q.num_levels == (2**bits - 1 if signed else 2**bits)
  assert q.num_exponents == len(positive)
  # The quantizer reaches every level and nothing else.
  x = np.concatenate([np.linspace(-1.5, 1.5, 3001), expected])
  np.testing.assert_allclose(np.unique(_act(q, x)), expected, rtol=1e-6, atol=0)


# -- rounding ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "fields", "x", "expected"), [
    # PoT b=3, full scale 1: levels 0, 1/4, 1/2, 1 (codes 0..3). Nearest in the linear domain;
    # ties to the even code: 1/8 -> 0, 3/8 -> 1/2 (code 2), 3/4 -> 1/2 (code 2).
    ("pot", {"bits": 3}, [0.1, 0.125, 0.13, 0.3, 0.375, 0.6, 0.75, 0.76, 1.0, 3.0, -0.76, -0.375],
     [0.0, 0.0, 0.25, 0.25, 0.5, 0.5, 0.5, 1.0, 1.0, 1.0, -1.0, -0.5]),
    # Unsigned PoT b=2: levels 0, 1/4, 1/2, 1; negative inputs go to 0.
    ("pot", {"bits": 2, "signed": False}, [-5.0, -0.1, 0.2, 0.8, 7.0], [0, 0, 0.25, 1.0, 1.0]),
    # Base √2, b=3: levels 0, 1/2, 1/√2, 1. The threshold between 1/√2 and 1 is their midpoint
    # 0.8536 (linear domain), not their geometric mean 2^(-1/4) = 0.8409 (log domain).
    ("log", {"bits": 3}, [0.2, 0.26, 0.6, 0.61, 0.85, 0.86, 2.0],
     [0.0, 0.5, 0.5, 2**-0.5, 2**-0.5, 1.0, 1.0]),
])
def test_rounding_ties_and_clipping_by_hand(name, fields, x, expected):
  np.testing.assert_allclose(_act(_q(name, **fields), x), expected, rtol=1e-6, atol=0)


def test_below_the_smallest_level_rounds_at_half_of_it():
  for m in (1, 2, 4):
    q = _q(bits=4, base_root=m)
    smallest = 2.0 ** (-6 / m)  # 7 exponents below full scale 1
    out = _act(q, np.array([0.49, 0.5, 0.51, 1.0]) * smallest)
    np.testing.assert_allclose(out, [0.0, 0.0, smallest, smallest], rtol=1e-6)


def test_nearest_level_in_the_linear_domain():
  rng = np.random.default_rng(0)
  for m, signed in ((1, True), (2, True), (4, False)):
    q = _q(bits=4, base_root=m, signed=signed)
    levels = np.asarray(q.levels({}, {"full_scale": jnp.float32(1.0)}, role="act"), np.float64)
    x = rng.uniform(-1.2, 1.2, 3000).astype(np.float32)
    out = _act(q, x)
    best = np.min(np.abs(x[:, None] - levels[None, :]), axis=1)
    np.testing.assert_allclose(np.abs(out - x), best, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("m", [1, 2, 4])
def test_floor_exponent_from_the_bits_is_exact_at_and_next_to_levels(m):
  ks = np.arange(-40, 41)
  levels = np.asarray(log.power_of_root(jnp.asarray(ks), m))
  # Exact powers of two, and the roots as float32 rounds them.
  np.testing.assert_array_equal(levels, (2.0 ** (ks / m)).astype(np.float32))
  below = np.nextafter(levels, np.float32(0))
  above = np.nextafter(levels, np.float32(np.inf))
  np.testing.assert_array_equal(log.floor_exponent(jnp.asarray(levels), m), ks)
  np.testing.assert_array_equal(log.floor_exponent(jnp.asarray(below), m), ks - 1)
  np.testing.assert_array_equal(log.floor_exponent(jnp.asarray(above), m), ks)
  # Zero is below every normal level.
  assert int(log.floor_exponent(jnp.float32(0.0), m)) < -126 * m


def test_sqnr_search_of_activations_runs_on_a_strided_subsample():
  x = jnp.arange(100_000, dtype=jnp.float32)
  assert log.strided_sample(x, 16384).shape == (16667,)  # stride 6
  assert log.strided_sample(x, 0).shape == (100_000,)
  # The subsample's best exponent is the whole batch's when values repeat evenly: the batch
  # of one 8 and many 0.6 (K* = 2 for PoT b=3) tiled, with the 8 first so the max is kept.
  batch = jnp.asarray(np.tile(np.concatenate([[8.0], np.full(100, 0.6)]), 400), jnp.float32)
  full = _q("pot", bits=3, full_scale="sqnr", sqnr_sample=0)
  sampled = _q("pot", bits=3, full_scale="sqnr", sqnr_sample=4000)
  assert float(full.batch_full_scale(batch, None)) == 4.0
  assert float(sampled.batch_full_scale(batch, None)) == 4.0


# -- the full-scale exponent ---------------------------------------------------------------------


@pytest.mark.parametrize(("m", "max_abs", "k"), [
    (1, 5.0, 3), (1, 4.0, 2), (1, 0.3, -1), (2, 5.0, 5), (2, 2**1.5, 3), (4, 1.0, 0),
    (4, 1.01, 1)])
def test_full_scale_from_max_is_the_smallest_level_not_below_it(m, max_abs, k):
  q = _q(bits=4, base_root=m)
  w = jnp.array([0.01, -max_abs, 0.5 * max_abs], jnp.float32)
  assert float(q.full_scale_exponent(w, {}, "weight")) == k
  out, levels = map(np.asarray, _weight_and_levels(q, w))
  np.testing.assert_allclose(levels.max(), 2.0 ** (k / m), rtol=1e-6)
  np.testing.assert_array_equal(out[1], levels[np.argmin(np.abs(levels + max_abs))])  # unclipped


@pytest.mark.parametrize("name, base_root", [("pot", 1), ("log", 2)])
def test_per_channel_sqnr_picks_each_channels_best_exponent(name, base_root):
  # Channels an order of magnitude apart, one with an outlier: each channel's K against a NumPy
  # search over that channel alone (nearest of {0} ∪ 2^(k/m), k in the window ending at K).
  rng = np.random.default_rng(3)
  w = rng.normal(size=(3, 3, 4, 5)).astype(np.float32) * np.float32([0.02, 0.3, 1, 4, 9])
  w[0, 0, 0, 2] = 12.0
  q = _q(name, bits=4, base_root=base_root, granularity="channel", full_scale="sqnr",
         sqnr_candidates=4)
  got = np.asarray(q.full_scale_exponent(jnp.asarray(w), {}, "weight"))
  width = q._grid().num_exponents
  offsets = []
  for c in range(w.shape[-1]):
    a = np.abs(w[..., c]).astype(np.float64).ravel()
    k_max = int(np.ceil(base_root * np.log2(a.max()) - 1e-4))
    errors = []
    for k in range(k_max, k_max - 4, -1):
      levels = np.concatenate([[0.0], 2.0 ** (np.arange(k - width + 1, k + 1) / base_root)])
      nearest = levels[np.argmin(np.abs(a[:, None] - levels[None, :]), axis=1)]
      errors.append(np.sum((a - nearest) ** 2))
    offsets.append(int(np.argmin(errors)))
    assert got[c] == k_max - offsets[-1], c
  assert len(set(offsets)) > 1  # the channels chose differently: each was searched on its own


def test_sqnr_full_scale_trades_the_outlier_for_resolution():
  # PoT b=3 (3 exponents), x = one 8 and a hundred 0.6. Squared errors by K:
  # K=3 {2,4,8}: 100·0.36 = 36; K=2 {1,2,4}: 100·0.16 + 16 = 32; K=1 {.5,1,2}: 1 + 36 = 37.
  x = jnp.asarray(np.concatenate([[8.0], np.full(100, 0.6)]), jnp.float32)
  for candidates, k in ((1, 3), (2, 2), (4, 2)):
    q = _q("pot", bits=3, full_scale="sqnr", sqnr_candidates=candidates)
    assert float(q.full_scale_exponent(x, {}, "weight")) == k
  q = _q("pot", bits=3, full_scale="sqnr")
  errors = {k: float(jnp.sum((x - log.log_quantize_raw(x, jnp.float32(k), q._grid())) ** 2))
            for k in (3, 2, 1, 0)}
  np.testing.assert_allclose([errors[3], errors[2], errors[1]], [36.0, 32.0, 37.0], rtol=1e-5)
  out = np.asarray(_weight_and_levels(q, x)[0])
  np.testing.assert_array_equal(out[:2], [4.0, 1.0])


def test_per_channel_full_scale():
  w = jnp.array([[1.0, 0.1], [-0.3, 0.05]])  # [in, out]: channel maxes 1 and 0.1
  q = _q("pot", bits=3, granularity="channel")
  np.testing.assert_array_equal(q.full_scale_exponent(w, {}, "weight"), [0.0, -3.0])
  out, levels = map(np.asarray, _weight_and_levels(q, w))
  np.testing.assert_array_equal(out, [[1.0, 0.125], [-0.25, 0.0625]])
  assert levels.shape == (2, 7)
  np.testing.assert_array_equal(levels[1], [-0.125, -0.0625, -0.03125, 0, 0.03125, 0.0625, 0.125])


def test_activation_full_scale_moving_average():
  q = _q("pot", bits=3, momentum=0.5, signed=False)
  _, state = q.init(jnp.array([0.0, 2.0]), "act")
  assert float(state["full_scale"]) == 2.0
  out, new = q.apply(jnp.array([0.0, 6.0]), {}, state, "act", True)
  assert float(new["full_scale"]) == 4.0  # K = 2: levels up to 4
  np.testing.assert_array_equal(out, [0.0, 4.0])
  _, same = q.apply(jnp.array([0.0, 6.0]), {}, state, "act", False)
  assert float(same["full_scale"]) == 2.0
  # 'sqnr' tracks the level 2^(K*/m) of the batch's best exponent, and rounds its average.
  s = _q("pot", bits=3, full_scale="sqnr", momentum=0.5)
  x = jnp.asarray(np.concatenate([[8.0], np.full(100, 0.6)]), jnp.float32)
  _, state = s.init(x, "act")
  assert float(state["full_scale"]) == 4.0
  assert float(s.exponent_from_full_scale(jnp.float32(4.0 * 2**0.4))) == 2.0


# -- gradients -----------------------------------------------------------------------------------


@pytest.mark.parametrize("estimator", ["ste", "clipped_ste"])
@pytest.mark.parametrize(("name", "signed"), [("pot", True), ("log", True), ("log", False)])
def test_input_gradient_matches_straight_through_reference(estimator, name, signed):
  q = _q(name, bits=4, estimator=estimator, signed=signed)
  state = {"full_scale": jnp.float32(1.0)}  # clip at ±1
  x = jnp.array([-3.0, -1.0, -0.3, 0.0, 0.2, 0.99, 1.01, 4.0])
  upstream = jnp.arange(1.0, 9.0)

  @jax.jit
  def grads(x):
    # training=False keeps the full scale at 1 (training would average in this batch's max).
    fq = lambda v: q.apply(v, {}, state, "act", False)[0]  # noqa: E731
    ste = lambda v: v + jax.lax.stop_gradient(fq(v) - v)  # noqa: E731
    return (jax.grad(lambda v: jnp.sum(fq(v) * upstream))(x),
            jax.grad(lambda v: jnp.sum(ste(v) * upstream))(x))

  got, ref = grads(x)
  if estimator == "ste":
    np.testing.assert_array_equal(got, ref)
  else:
    xn = np.asarray(x)
    inside = (np.abs(xn) <= 1.0) if signed else ((xn >= 0) & (xn <= 1.0))
    np.testing.assert_array_equal(got, np.where(inside, ref, 0.0))


def test_weight_gradient_is_straight_through_and_full_scale_is_constant():
  q = _q("log", bits=3, estimator="ste")
  w = jnp.array([0.3, -1.7, 0.02, 1.0])
  g = jax.jit(jax.grad(lambda v: jnp.sum(q.apply(v, {}, {}, "weight", True)[0] * v)))(w)
  out = np.asarray(q.apply(w, {}, {}, "weight", False)[0])
  np.testing.assert_allclose(g, out + np.asarray(w), rtol=1e-6)  # d(Q(w)·w)/dw = w + Q(w) (STE)


# -- configuration -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "fields", "match"),
    [("log", {"bits": 1}, "bits=1 is out of range"),
     ("log", {"bits": 9}, "bits=9 is out of range; valid: integers 2 to 8"),
     ("log", {"base_root": 3}, "base_root=3 is not valid; choose one of 1, 2, 4"),
     ("pot", {"base_root": 2}, "base_root=2 is not valid; choose one of 1"),
     ("log", {"full_scale": "mse"}, "full_scale='mse'.*max, sqnr"),
     ("log", {"sqnr_candidates": 0}, "sqnr_candidates=0"),
     ("log", {"estimator": "lsq"}, "estimator='lsq'"),
     ("log", {"momentum": -0.1}, "momentum=-0.1"),
     ("pot", {"m": 1}, "no field.*m.*valid fields")],
)
def test_bad_configs_raise_one_line_errors(name, fields, match):
  with pytest.raises(ValueError, match=match) as e:
    _q(name, **fields)
  assert "\n" not in str(e.value)


def test_roles_and_describe():
  with pytest.raises(ValueError, match="weights only"):
    _q("pot", granularity="channel").validate_role("act")
  _q("pot", granularity="channel").validate_role("weight")
  assert _q("pot", bits=3).describe() == "pot3/tensor/max"
  assert _q("log", signed=False, full_scale="sqnr").describe() == "logu4/m2/tensor/sqnr"
  assert _q("log", bits=5).bits == 5
  assert _q("log").aux_loss(jnp.ones(3), jnp.ones(3), {}, {}, "weight") is None


# -- properties ----------------------------------------------------------------------------------

_CONFIGS = [("pot", 2, 1, True), ("pot", 4, 1, False), ("log", 3, 2, True), ("log", 4, 2, False),
            ("log", 3, 4, True), ("log", 5, 4, True)]


@functools.partial(jax.jit, static_argnums=0)
def _quantize_twice(q, x, full_scale):
  state = {"full_scale": full_scale}
  out = q.apply(x, {}, state, "act", False)[0]
  return out, q.apply(out, {}, state, "act", False)[0], q.levels({}, state, role="act")


@settings(max_examples=40, deadline=None)
@given(st.lists(st.floats(-50, 50, allow_nan=False, width=32), min_size=16, max_size=16),
       st.sampled_from(_CONFIGS), st.floats(0.0625, 40.0, width=32))
def test_properties(values, config, full_scale):
  name, bits, m, signed = config
  q = _q(name, bits=bits, base_root=m, signed=signed)
  x = jnp.asarray(values, jnp.float32)
  out, again, levels = map(np.asarray, _quantize_twice(q, x, jnp.float32(full_scale)))
  order = np.argsort(np.asarray(x), kind="stable")
  assert np.all(np.diff(out[order]) >= 0)  # monotone non-decreasing
  assert np.all(np.isin(out, levels))  # on the level set, exactly
  assert len(np.unique(out)) <= q.num_levels
  np.testing.assert_array_equal(again, out)  # idempotent


# -- through the interceptor ---------------------------------------------------------------------

def test_through_the_interceptor(recorded_conv_dense):
  model, recorded = recorded_conv_dense
  x = jnp.asarray(np.abs(np.random.default_rng(2).normal(size=(4, 5, 5, 1))), jnp.float32)
  layers = intercept.discover_layers(model, x)
  weight = {"name": "pot", "bits": 4, "granularity": "channel"}
  act = {"name": "log", "bits": 3, "signed": False, "full_scale": "sqnr"}
  plan = intercept.resolve(layers, weight=weight, act=act)
  key = jax.random.key(1, impl="rbg")  # XLA:CPU compiles rbg much faster than threefry
  variables = jax.jit(intercept.quantized_init(model, plan))(key, x)
  assert set(variables["params"]["fc"]) == {"kernel", "bias"}  # nothing learned
  assert set(variables["quant_state"]["fc"]) == {"input_full_scale"}
  weight_q, act_q = plan.get("fc").weight, plan.get("fc").act

  @jax.jit
  def run(variables):
    def loss(params):
      recorded.clear()
      out, updates = intercept.quantized_apply(model, plan, training=True)(
          {**variables, "params": params}, x, mutable=["quant_state", "quant_losses"])
      operands = list(recorded)
      recorded.clear()
      return jnp.sum(out**2), (operands, updates)

    grads, (operands, updates) = jax.grad(loss, has_aux=True)(variables["params"])
    levels = [(weight_q.levels({}, {}, rhs),
               act_q.levels({}, {"full_scale": s["input_full_scale"]}, role="act"))
              for (_, rhs), s in zip(operands, updates["quant_state"].values(), strict=True)]
    return grads, operands, updates, levels

  grads, operands, updates, levels = run(variables)
  assert "quant_losses" not in updates or not updates["quant_losses"]  # no aux loss
  for (lhs, rhs), (kernel_levels, input_levels) in zip(operands, levels, strict=True):
    assert np.all(np.isin(np.asarray(lhs), np.asarray(input_levels)))
    kernel_levels = np.asarray(kernel_levels)  # [Cout, 15]
    rhs = np.asarray(rhs)
    for c in range(rhs.shape[-1]):
      assert np.all(np.isin(rhs[..., c], kernel_levels[c]))
  for layer in ("conv", "fc"):
    g = np.asarray(grads[layer]["kernel"])
    assert np.all(np.isfinite(g)) and np.any(g != 0), layer
