"""ESB: level sets from the formula, rounding, α from λ·σ or learned, DDA losses, λ table."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from quantjax import intercept, quantizers
from quantjax.quantizers import esb, esb_lambda


def _normal(seed, shape):
  return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


def _esb(**fields):
  return quantizers.from_dict({"name": "esb", **fields})


@functools.partial(jax.jit, static_argnums=(1, 2, 3))
def _unit_padded(u, bits, k, signed):
  q = _esb(bits=bits, significant_bits=k, signed=signed, alpha="learned")
  return q.apply(u, {"alpha": jnp.float32(1.0)}, {}, "weight", False)[0]


def _unit(u, bits, k, signed=True):
  """q(u) in units of α, via `apply` with a learned α of 1 (padded: one compile per format)."""
  u = np.asarray(u, np.float32).ravel()
  size = max(1024, 1 << (len(u) - 1).bit_length())
  out = _unit_padded(jnp.asarray(np.pad(u, (0, size - len(u)))), bits, k, signed)
  return np.asarray(out)[: len(u)]


def _formula_levels(bits, k):
  """Positive levels by brute force from METHODS.md §5's formula on a fine grid of u."""
  mantissa, exponent = k - 1, bits - k
  if exponent == 1:
    return np.arange(2 ** (bits - 1)) + 0.5
  n = 2**exponent - 2
  u = np.linspace(0.0, 2.0 ** (n + 2), 2 ** (n + 2) * 2 ** (mantissa + 3) + 1)
  e = np.clip(np.floor(np.log2(np.maximum(u, 1e-30))), 0, n)
  step = 2.0 ** (e - mantissa)
  q = np.clip(step * np.round(u / step), 0, 2.0 ** (n + 1) - 2.0 ** (n - mantissa))
  levels = np.unique(q)
  return levels[levels > 0]


# -- the level sets ------------------------------------------------------------------------------


def test_the_examples_of_methods():
  # METHODS.md §5, positive half in units of α.
  pos = lambda b, k: esb.unit_levels(b, k)[esb.unit_levels(b, k) > 0]  # noqa: E731
  np.testing.assert_array_equal(pos(3, 1), [1, 2, 4])
  np.testing.assert_array_equal(pos(4, 2), [0.5, 1, 1.5, 2, 3, 4, 6])


@pytest.mark.parametrize(("bits", "k"), [(2, 1), (3, 1), (3, 2), (4, 1), (4, 2), (4, 3), (5, 2),
                                         (5, 3), (6, 3), (6, 4), (8, 6), (8, 7)])
def test_level_sets_follow_the_formula(bits, k):
  levels = esb.unit_levels(bits, k)
  positive = levels[levels > 0]
  np.testing.assert_array_equal(positive, _formula_levels(bits, k))
  np.testing.assert_array_equal(levels, np.concatenate(
      [-positive[::-1], [0.0] if bits - k >= 2 else [], positive]))
  assert len(levels) == (2**bits if bits - k == 1 else 2**bits - 1)
  q = _esb(bits=bits, significant_bits=k)
  assert q.num_levels == len(levels) and (q.mantissa_bits, q.exponent_bits) == (k - 1, bits - k)
  assert esb.max_level(k - 1, bits - k) == levels.max()
  # The quantizer reaches every level and nothing else.
  u = np.linspace(-1.1 * levels.max(), 1.1 * levels.max(), 40001)
  u = np.concatenate([u, levels]).astype(np.float32)
  np.testing.assert_array_equal(np.unique(_unit(u, bits, k)), levels)


@pytest.mark.parametrize("bits", [3, 4, 5, 6])
def test_one_significant_bit_is_power_of_two(bits):
  n = 2 ** (bits - 1) - 2
  levels = esb.unit_levels(bits, 1)
  np.testing.assert_array_equal(levels[levels > 0], 2.0 ** np.arange(n + 1))


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_b_minus_one_significant_bits_is_uniform_mid_rise(bits):
  levels = esb.unit_levels(bits, bits - 1)
  half = np.arange(2 ** (bits - 1)) + 0.5
  np.testing.assert_array_equal(levels, np.concatenate([-half[::-1], half]))
  assert len(levels) == 2**bits and 0.0 not in levels


@pytest.mark.parametrize(("bits", "k"), [(2, 1), (3, 1), (3, 2), (4, 2), (4, 3), (6, 2)])
def test_unsigned_is_the_non_negative_half_of_one_more_bit(bits, k):
  levels = esb.unit_levels(bits, k, signed=False)
  signed = esb.unit_levels(bits + 1, k)
  np.testing.assert_array_equal(levels, signed[signed >= 0])
  assert len(levels) == 2**bits and levels[0] == 0.0
  np.testing.assert_array_equal(_unit([-3.0, -0.1, 0.0], bits, k, signed=False), [0, 0, 0])
  u = np.concatenate([levels, [-1.0, 2 * levels.max()], np.linspace(0, 8, 1001)])
  np.testing.assert_array_equal(np.unique(_unit(u, bits, k, signed=False)), levels)


# -- rounding ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("bits", "k", "u", "expected"), [
    # b=4, k=2: {0, .5, 1, 1.5} below 2 (step .5), {2, 3} (step 1), {4, 6} (step 2, clip 6).
    # Ties round half to even in units of the octave's step.
    (4, 2, [0.25, 0.26, 0.75, 1.25, 1.75, 1.9, 2.5, 3.5, 5.0, 5.1, 7.0, 100.0],
     [0.0, 0.5, 1.0, 1.0, 2.0, 2.0, 2.0, 4.0, 4.0, 6.0, 6.0, 6.0]),
    (4, 2, [-0.25, -0.75, -2.5, -5.0, -7.0, -100.0], [0.0, -1.0, -2.0, -4.0, -6.0, -6.0]),
    # b=3, k=1 (power of two): zero below 1/2 (tie to 0), 1.5 -> 2, 3 -> 4 (tie, even code).
    (3, 1, [0.5, 0.51, 1.49, 1.5, 2.9, 3.0, 3.1, 6.0, 1e6, -3.0],
     [0.0, 1.0, 1.0, 2.0, 2.0, 4.0, 4.0, 4.0, 4.0, -4.0]),
    # b=3, k=2 (mid-rise): integers are ties, to the even magnitude index; 0 -> +1/2.
    (3, 2, [0.0, 0.99, 1.0, 1.01, 2.0, 3.0, 10.0, -1.0, -2.0, -10.0],
     [0.5, 0.5, 0.5, 1.5, 2.5, 2.5, 3.5, -0.5, -2.5, -3.5]),
])
def test_rounding_ties_and_clipping_by_hand(bits, k, u, expected):
  np.testing.assert_array_equal(_unit(u, bits, k), expected)


def test_esb_is_the_nearest_level():
  rng = np.random.default_rng(0)
  for bits, k, signed in [(4, 2, True), (5, 3, True), (5, 1, True), (4, 2, False), (6, 4, True)]:
    levels = esb.unit_levels(bits, k, signed)
    u = (rng.normal(size=3000) * levels.max() * 0.6).astype(np.float32)
    out = _unit(u, bits, k, signed)
    best = np.min(np.abs(u[:, None] - levels[None, :]), axis=1)
    np.testing.assert_allclose(np.abs(out - u), best, rtol=1e-6, atol=1e-7)


def test_scale_multiplies_the_levels():
  q = _esb(bits=4, significant_bits=2, alpha="learned", granularity="channel")
  w = jnp.array([[0.3, 0.3], [-2.2, 50.0]])  # [in, out]: α = (0.25, 4)
  alpha = jnp.array([0.25, 4.0])
  out = q.apply(w, {"alpha": alpha}, {}, "weight", False)[0]
  np.testing.assert_array_equal(out, [[0.25, 0.0], [-0.25 * 6, 24.0]])  # 1.2 -> 1; 0.075 -> 0
  levels = q.levels({"alpha": alpha}, {})
  assert levels.shape == (2, 15)
  np.testing.assert_array_equal(levels[1], 4.0 * esb.unit_levels(4, 2))


# -- α ---------------------------------------------------------------------------------------------


def test_alpha_is_lambda_times_std():
  w = jnp.asarray(_normal(0, (3, 3, 8, 4)) * np.array([0.1, 0.2, 0.4, 0.8], np.float32))
  channel = _esb(bits=4, significant_bits=2, granularity="channel")
  tensor = _esb(bits=4, significant_bits=2)
  learned = _esb(bits=4, significant_bits=2, granularity="channel", alpha="learned")

  @jax.jit
  def scales(w):
    return (channel.scale(w, {}, {}, "weight"), learned.init(w, "weight")[0]["alpha"],
            tensor.scale(w, {}, {}, "weight"), tensor.apply(w, {}, {}, "weight", False)[0])

  alpha, init, alpha_tensor, out = map(np.asarray, scales(w))
  assert channel.lambda_ == esb.lambda_for(4, 2)
  np.testing.assert_allclose(alpha, channel.lambda_ * np.std(np.asarray(w), axis=(0, 1, 2)),
                             rtol=1e-5)
  np.testing.assert_allclose(init, alpha, rtol=1e-6)
  # Per tensor: one α from the whole tensor's std.
  np.testing.assert_allclose(alpha_tensor, channel.lambda_ * np.std(np.asarray(w)), rtol=1e-5)
  np.testing.assert_array_equal(np.unique(out / alpha_tensor), esb.unit_levels(4, 2))


def test_activation_sigma_moving_average_unsigned():
  q = _esb(bits=4, significant_bits=2, signed=False, momentum=0.5)
  params, state = q.init(jnp.array([0.0, -5.0, 3.0, 4.0]), "act")
  assert params == {}
  np.testing.assert_allclose(state["sigma"], np.sqrt((9 + 16) / 2), rtol=1e-6)  # RMS of x > 0
  x = jnp.array([0.0, 1.0])
  _, new = q.apply(x, params, state, "act", True)
  np.testing.assert_allclose(new["sigma"], 0.5 * np.sqrt(12.5) + 0.5, rtol=1e-6)
  out, same = q.apply(x, params, state, "act", False)
  assert float(same["sigma"]) == float(state["sigma"])
  alpha = esb.lambda_for(4, 2, signed=False) * np.sqrt(12.5)
  np.testing.assert_allclose(out, alpha * _unit(np.asarray(x) / alpha, 4, 2, signed=False),
                             rtol=1e-6)


# -- gradients -----------------------------------------------------------------------------------


@pytest.mark.parametrize("estimator", ["ste", "clipped_ste"])
@pytest.mark.parametrize(("bits", "k", "top"), [(4, 2, 6.0), (3, 2, 3.5), (3, 1, 4.0)])
def test_input_gradient_matches_straight_through_reference(estimator, bits, k, top):
  q = _esb(bits=bits, significant_bits=k, alpha="learned", estimator=estimator)
  params = {"alpha": jnp.float32(0.5)}  # range ±top/2
  x = jnp.array([-9.0, -top / 2, -1.3, 0.2, 0.74, top / 2 - 0.01, top / 2 + 0.01, 5.0])
  upstream = jnp.arange(1.0, 9.0)

  @jax.jit
  def grads(x):
    fq = lambda v: q.apply(v, params, {}, "weight", True)[0]  # noqa: E731
    ste = lambda v: v + jax.lax.stop_gradient(fq(v) - v)  # noqa: E731
    return (jax.grad(lambda v: jnp.sum(fq(v) * upstream))(x),
            jax.grad(lambda v: jnp.sum(ste(v) * upstream))(x))

  got, ref = grads(x)
  if estimator == "ste":
    np.testing.assert_array_equal(got, ref)
  else:
    np.testing.assert_array_equal(got, np.where(np.abs(np.asarray(x)) <= top / 2, ref, 0.0))


def test_learned_alpha_gradient_hand_worked():
  # dQ/dα = q(u) - u inside, q(u) (the clip level) outside; scaled by 1/sqrt(N·Qp), Qp = 7.
  q = _esb(bits=4, significant_bits=2, alpha="learned")
  x = jnp.array([0.3, 1.2, -5.0, 20.0])  # α = 1: u = x, q = (0.5, 1, -4, 6); 20 is clipped
  grad = jax.grad(lambda a: jnp.sum(q.apply(x, {"alpha": a}, {}, "weight", True)[0]))(1.0)
  expected = ((0.5 - 0.3) + (1.0 - 1.2) + (-4.0 + 5.0) + 6.0) / np.sqrt(4 * 7)
  np.testing.assert_allclose(grad, expected, rtol=1e-6)
  # A fixed α ('lambda_std') gets no gradient through the quantizer.
  fixed = _esb(bits=4, significant_bits=2)
  g = jax.grad(lambda v: jnp.sum(fixed.apply(v, {}, {}, "weight", True)[0]))(x)
  assert np.all(np.isfinite(g))


def test_learned_alpha_grows_when_everything_is_clipped():
  q = _esb(bits=3, significant_bits=1, alpha="learned")  # top level 4α
  x = jnp.linspace(10.0, 20.0, 16)  # all beyond 4α for α = 1
  loss = lambda a: jnp.mean(jnp.square(q.apply(x, {"alpha": a}, {}, "weight", True)[0] - x))  # noqa: E731
  grad = float(jax.grad(loss)(jnp.float32(1.0)))
  assert grad < 0
  assert float(loss(1.0 - 0.1 * grad)) < float(loss(1.0))


# -- the distribution-difference loss ------------------------------------------------------------


@pytest.mark.parametrize("dda_loss", ["mse", "l1", "kl"])
def test_dda_loss_zero_on_levels_positive_off_them(dda_loss):
  q = _esb(bits=4, significant_bits=2, alpha="learned", dda_loss=dda_loss)
  alpha = jnp.float32(0.3)
  on = jnp.tile(alpha * jnp.asarray(esb.unit_levels(4, 2), jnp.float32), 16)  # [240]
  off = jnp.asarray(_normal(1, (240,)))
  loss_and_grads = jax.jit(jax.value_and_grad(
      lambda v, a: q.aux_loss(v, None, {"alpha": a}, {}, "weight"), argnums=(0, 1)))
  assert float(loss_and_grads(on, alpha)[0]) == 0.0
  value, (dx, dalpha) = loss_and_grads(off, alpha)
  assert float(value) > 0
  assert np.isfinite(float(dalpha)) and float(dalpha) != 0.0
  assert np.all(np.isfinite(dx)) and np.any(np.asarray(dx) != 0)


def test_dda_mse_gradients_by_hand():
  # D = mean((x - αq)²)/var(x) with q held fixed:
  # dD/dx = 2(x - αq)/(N·var), dD/dα = -2·mean((x - αq)·q)/var.
  q = _esb(bits=4, significant_bits=2, alpha="learned")
  x = jnp.array([0.3, 1.2, -5.0, 20.0, 0.0, 2.6])
  alpha = jnp.float32(1.0)
  codes = _unit(x, 4, 2)
  dx, dalpha = jax.grad(lambda v, a: q.aux_loss(v, None, {"alpha": a}, {}, "weight"),
                        argnums=(0, 1))(x, alpha)
  xn, var = np.asarray(x), np.var(np.asarray(x))
  np.testing.assert_allclose(dx, 2 * (xn - codes) / (len(xn) * var), rtol=1e-5)
  np.testing.assert_allclose(dalpha, -2 * np.mean((xn - codes) * codes) / var, rtol=1e-5)


def test_dda_gradient_points_alpha_toward_lambda_sigma():
  q = _esb(bits=4, significant_bits=2, alpha="learned")
  w = jnp.asarray(_normal(2, (2048,)))
  loss = jax.jit(lambda a: q.aux_loss(w, None, {"alpha": a}, {}, "weight"))
  grad = jax.jit(jax.grad(loss))
  optimum = esb.lambda_for(4, 2) * float(jnp.std(w))
  for start, sign in ((0.1, -1.0), (2.0, 1.0)):  # too small (most values clip), too large
    a = jnp.float32(start)
    assert np.sign(float(grad(a))) == sign
    assert float(loss(a - 0.05 * grad(a))) < float(loss(a))
  # From below, a few plain steps land near the Gaussian-optimal scale.
  a = jnp.float32(0.1)
  for _ in range(20):
    a = a - 0.05 * grad(a)
  assert abs(float(a) / optimum - 1) < 0.2 and float(loss(a)) < 1.2 * float(loss(optimum))


def test_aux_loss_roles_and_none():
  x = jnp.asarray(np.abs(_normal(3, (64,))))
  q = _esb(signed=False)
  params, state = q.init(x, "act")
  assert q.aux_loss(x, None, params, state, "act") is None  # no learned α: nothing to teach
  assert _esb(dda_loss="none").aux_loss(x, None, {}, {}, "weight") is None
  learned = _esb(signed=False, alpha="learned")
  params, state = learned.init(x, "act")
  dx = jax.grad(lambda v: learned.aux_loss(v, None, params, state, "act"))(x)
  np.testing.assert_array_equal(dx, 0.0)  # activations: only α learns from the loss
  assert float(learned.aux_loss(x, None, params, state, "act")) > 0


# -- configuration -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "match"),
    [({"bits": 1}, "bits=1 is out of range"),
     ({"bits": 9}, "bits=9 is out of range; valid: integers 2 to 8"),
     ({"bits": 4, "significant_bits": 4}, "significant_bits=4 is out of range; valid: integers 1 "
                                          "to 3"),
     ({"significant_bits": 0}, "significant_bits=0"),
     ({"alpha": "max"}, "alpha='max'.*lambda_std, learned"),
     ({"dda_loss": "l2"}, "dda_loss='l2'.*mse, l1, kl, none"),
     ({"kl_bins": 1}, "kl_bins=1"),
     ({"granularity": "row"}, "granularity='row'"),
     ({"momentum": 1.0}, "momentum=1.0"),
     ({"k": 2}, "no field.*k.*valid fields")],
)
def test_bad_configs_raise_one_line_errors(fields, match):
  with pytest.raises(ValueError, match=match) as e:
    _esb(**fields)
  assert "\n" not in str(e.value)


def test_roles_and_describe():
  with pytest.raises(ValueError, match="weights only"):
    _esb(granularity="channel").validate_role("act")
  _esb(granularity="channel").validate_role("weight")
  q = _esb(bits=3, significant_bits=1, signed=False, alpha="learned")
  assert isinstance(q, esb.ESB) and q.bits == 3
  assert q.describe() == "esbu3k1/tensor/learned"


# -- the λ table ---------------------------------------------------------------------------------


def test_lambda_table_covers_every_format():
  for signed in (True, False):
    for bits in range(2, esb.MAX_ESB_BITS + 1):
      for k in range(1, bits):
        lam = esb.lambda_for(bits, k, signed)
        assert 2.0**esb_lambda.LOG2_LAMBDA_MIN <= lam <= 2.0**esb_lambda.LOG2_LAMBDA_MAX


@pytest.mark.parametrize(("bits", "k", "signed"), [(3, 1, True), (4, 2, True), (3, 2, False)])
def test_lambda_table_is_reproduced(bits, k, signed):
  np.testing.assert_allclose(esb_lambda.optimal_lambda(bits, k, signed),
                             esb.lambda_for(bits, k, signed), rtol=1e-6)


def test_lambda_of_uniform_formats_matches_max_1960():
  # Mid-rise uniform (k = b-1) optimal steps for a unit Gaussian (Max 1960, Table I).
  for bits, step in [(2, 0.9957), (3, 0.5860), (4, 0.3352)]:
    np.testing.assert_allclose(esb.lambda_for(bits, bits - 1), step, atol=1e-4)
  # The unsigned form on a half-normal equals the signed (b+1)-bit form on a Gaussian.
  np.testing.assert_allclose(esb.lambda_for(3, 2, signed=False), esb.lambda_for(4, 2), rtol=1e-5)


def test_lambda_minimises_the_sampled_quantization_error():
  z = jnp.asarray(_normal(4, (200_000,)))
  q = _esb(bits=4, significant_bits=2, alpha="learned")
  lam = esb.lambda_for(4, 2)

  @jax.jit
  def mse(a):
    return jnp.mean(jnp.square(q.apply(z, {"alpha": a}, {}, "weight", False)[0] - z))

  errors = [float(mse(lam * f)) for f in (0.9, 1.0, 1.1)]
  assert errors[1] < errors[0] and errors[1] < errors[2]
  exact = float(esb_lambda.quantization_mse(lam, esb.unit_levels(4, 2), True))
  np.testing.assert_allclose(errors[1], exact, rtol=0.02)


# -- properties ----------------------------------------------------------------------------------

_FORMATS = [(2, 1, True), (3, 1, True), (3, 2, True), (4, 2, True), (5, 3, True), (4, 1, False),
            (4, 2, False)]


@functools.partial(jax.jit, static_argnums=0)
def _quantize_twice(q, x, alpha):
  params = {"alpha": alpha}
  out = q.apply(x, params, {}, "weight", False)[0]
  return out, q.apply(out, params, {}, "weight", False)[0]


@settings(max_examples=40, deadline=None)
@given(st.lists(st.floats(-100, 100, allow_nan=False, width=32), min_size=16, max_size=16),
       st.sampled_from(_FORMATS), st.integers(-4, 3))
def test_properties(values, fmt, log2_alpha):
  bits, k, signed = fmt
  alpha = np.float32(2.0**log2_alpha)  # a power of two: α·level is exact
  q = _esb(bits=bits, significant_bits=k, signed=signed, alpha="learned")
  x = jnp.asarray(values, jnp.float32)
  out, again = map(np.asarray, _quantize_twice(q, x, jnp.float32(alpha)))
  levels = alpha * esb.unit_levels(bits, k, signed)
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
  weight = {"name": "esb", "bits": 4, "significant_bits": 2, "alpha": "learned",
            "granularity": "channel"}
  act = {"name": "esb", "bits": 3, "significant_bits": 2, "signed": False}
  plan = intercept.resolve(layers, weight=weight, act=act,
                           rules=[intercept.Rule("fc", act={"alpha": "learned"})])
  key = jax.random.key(1, impl="rbg")  # XLA:CPU compiles rbg much faster than threefry
  variables = jax.jit(intercept.quantized_init(model, plan))(key, x)
  assert set(variables["params"]["conv"]) == {"kernel", "bias", "kernel_alpha"}
  assert set(variables["params"]["fc"]) == {"kernel", "bias", "kernel_alpha", "input_alpha"}
  assert set(variables["quant_state"]["conv"]) == {"input_sigma"}
  assert variables["params"]["fc"]["kernel_alpha"].shape == (2,)

  @jax.jit
  def run(variables):
    def loss(params):
      recorded.clear()
      out, updates = intercept.quantized_apply(model, plan, training=True)(
          {**variables, "params": params}, x, mutable=["quant_state", "quant_losses"])
      operands = list(recorded)
      recorded.clear()
      aux = updates["quant_losses"]
      total = jnp.sum(out**2) + sum(jax.tree_util.tree_leaves(aux))
      return total, (operands, aux, updates["quant_state"])

    grads, aux = jax.grad(loss, has_aux=True)(variables["params"])
    return grads, aux

  grads, (operands, losses, new_state) = run(variables)
  assert set(losses["conv"]) == {"kernel_loss"}  # the conv's input α is not learned
  assert set(losses["fc"]) == {"kernel_loss", "input_loss"}
  for layer in ("conv", "fc"):
    for value in jax.tree_util.tree_leaves(losses[layer]):
      assert np.isfinite(float(value)) and float(value) > 0
  # Operands lie on their level sets: kernels per output channel, inputs per tensor.
  sigma = float(variables["quant_state"]["conv"]["input_sigma"])
  sigma = 0.9 * sigma + 0.1 * float(np.sqrt(np.mean(np.asarray(x)[np.asarray(x) > 0] ** 2)))
  np.testing.assert_allclose(new_state["conv"]["input_sigma"], sigma, rtol=1e-6)
  input_alphas = [esb.lambda_for(3, 2, signed=False) * sigma,
                  float(variables["params"]["fc"]["input_alpha"])]
  for (lhs, rhs), layer, input_alpha in zip(operands, ("conv", "fc"), input_alphas, strict=True):
    unit = np.asarray(lhs) / np.float32(input_alpha)
    levels = esb.unit_levels(3, 2, signed=False)
    assert np.abs(unit.ravel()[:, None] - levels[None, :]).min(axis=1).max() < 1e-5
    alpha = np.asarray(variables["params"][layer]["kernel_alpha"])
    unit = np.asarray(rhs) / alpha  # [..., Cout] / [Cout]
    levels = esb.unit_levels(4, 2)
    assert np.abs(unit.ravel()[:, None] - levels[None, :]).min(axis=1).max() < 1e-5
  for layer in ("conv", "fc"):
    for name in ("kernel", "kernel_alpha"):
      g = np.asarray(grads[layer][name])
      assert np.all(np.isfinite(g)) and np.any(g != 0), f"{layer}/{name}"
  g = np.asarray(grads["fc"]["input_alpha"])
  assert np.isfinite(g) and g != 0
