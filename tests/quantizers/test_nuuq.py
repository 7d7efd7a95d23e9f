"""NUUQ: grid levels, merged collisions, complexity figures, re-clustering, gradients."""

import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from quantjax import intercept, quantizers
from quantjax.quantizers import nuuq


def _nuuq(**fields):
  return quantizers.from_dict({"name": "nuuq", **fields})


@functools.partial(jax.jit, static_argnums=0)
def _init_and_quantize(q, w):
  _, state = q.init(w, "weight")
  return q.apply(w, {}, state, "weight", False)[0], state


def test_hand_worked_three_levels():
  # k-means from quantiles (-0.5, 0, 0.45) converges to the cluster means (-7/15, 0.01, 0.475).
  # pow2 grid, b=4: F = 3 - ceil(log2 0.5) = 4, step 1/16, codes [-7, 7]:
  # -7.47 -> -7, 0.16 -> 0, 7.6 -> 8 clipped to 7.
  w = jnp.array([-0.5, -0.5, -0.4, 0.0, 0.02, 0.45, 0.5])
  q = _nuuq(num_levels=3, container_bits=4)
  out, state = _init_and_quantize(q, w)
  np.testing.assert_array_equal(state["levels"], [-7 / 16, 0.0, 7 / 16])
  assert float(state["grid_step"]) == 1 / 16
  np.testing.assert_array_equal(out, [-7 / 16, -7 / 16, -7 / 16, 0, 0, 7 / 16, 7 / 16])
  step, codes = q.integer_levels(state)
  np.testing.assert_array_equal(codes, [-7, 0, 7])
  assert float(step) == 1 / 16


@pytest.mark.parametrize(("grid", "bits", "levels"), [("pow2", 4, 3), ("pow2", 6, 5),
                                                      ("max", 3, 6)])
def test_levels_lie_on_the_b_bit_grid(grid, bits, levels):
  w = jnp.asarray(0.07 * np.random.default_rng(3).normal(size=(3, 3, 8, 16)), jnp.float32)
  q = _nuuq(num_levels=levels, container_bits=bits, grid=grid)
  out, state = _init_and_quantize(q, w)
  step, table = float(state["grid_step"]), np.asarray(state["levels"])
  max_abs = float(jnp.max(jnp.abs(w)))
  if grid == "pow2":
    assert step == 2.0 ** -(bits - 1 - math.ceil(math.log2(max_abs)))
  else:
    np.testing.assert_allclose(step, max_abs / (2 ** (bits - 1) - 1), rtol=1e-6)
  # Every level is (exactly, in float32) an integer code times the step.
  grid_step, codes = q.integer_levels(state)
  np.testing.assert_array_equal(table, np.float32(grid_step) * np.asarray(codes, np.float32))
  assert np.abs(codes).max() <= 2 ** (bits - 1) - 1
  assert table.shape == (levels,) and np.all(np.diff(table) >= 0)
  distinct = np.unique(np.asarray(out))
  assert len(distinct) <= levels and set(distinct) <= set(table)


def test_colliding_levels_are_merged():
  # k-means: -1, 0.30, 0.34. Grid 'max', b=3: step 1/3, codes -3, 0.9 -> 1, 1.02 -> 1: a collision.
  w = jnp.array([-1.0] * 4 + [0.30] * 4 + [0.34] * 4)
  q = _nuuq(num_levels=3, container_bits=3, grid="max")
  out, state = _init_and_quantize(q, w)
  np.testing.assert_allclose(state["levels"], [-1.0, 1 / 3, 1 / 3], rtol=1e-6)
  assert len(np.unique(np.asarray(out))) == 2
  stats = nuuq.index_stats(w, state)
  np.testing.assert_array_equal(stats["histogram"], [4, 8, 0])  # the merged entry is unused
  assert int(stats["distinct_levels"]) == 2
  np.testing.assert_allclose(stats["entropy_bits"], -(1 / 3) * np.log2(1 / 3) - (2 / 3) * np.log2(
      2 / 3), rtol=1e-6)


def test_complexity_figures():
  q = _nuuq(num_levels=3, container_bits=6)
  assert q.bits == pytest.approx(1.5849625)  # log2 3: 3 levels = 1.58 equivalent bits
  assert q.packed_bits == 2 and q.multiplier_bits == 6
  assert _nuuq(num_levels=4).bits == 2.0 and _nuuq(num_levels=5).packed_bits == 3
  assert q.describe() == "nuuq3/b6/pow2"


def test_entropy_of_a_hand_built_index_histogram():
  state = {"levels": jnp.array([-1.0, 0.0, 1.0])}
  w = jnp.array([-1.1, -0.9, 0.1, 0.8])  # indices 0, 0, 1, 2: p = 1/2, 1/4, 1/4
  stats = nuuq.index_stats(w, state)
  np.testing.assert_array_equal(stats["histogram"], [2, 1, 1])
  np.testing.assert_allclose(stats["entropy_bits"], 1.5, rtol=1e-6)
  np.testing.assert_allclose(stats["equivalent_bits"], np.log2(3), rtol=1e-6)
  assert int(stats["packed_bits"]) == 2 and int(stats["distinct_levels"]) == 3
  uniform4 = nuuq.index_stats(jnp.array([-3.0, -1.0, 1.0, 3.0]), {"levels": jnp.array(
      [-3.0, -1.0, 1.0, 3.0])})
  np.testing.assert_allclose(uniform4["entropy_bits"], 2.0, rtol=1e-6)


@functools.partial(jax.jit, static_argnums=0)
def _train_step(q, w, state):
  return q.apply(w, {}, state, "weight", True)[1]


def _drive(q, w_init, w_train, calls):
  """Levels after each of `calls` training applies with weights `w_train`, from init on w_init."""
  _, state = q.init(w_init, "weight")
  history = [np.asarray(state["levels"])]
  for _ in range(calls):
    state = _train_step(q, w_train, state)
    history.append(np.asarray(state["levels"]))
  return history, state


def test_reclustering_happens_at_step_k_and_not_before():
  w0 = jnp.array([-0.5, -0.25, 0.0, 0.25, 0.5, 0.4, -0.4, 0.1])
  w1 = 0.5 * w0 + 0.1
  q = _nuuq(num_levels=3, container_bits=8, recluster_every=3)
  history, state = _drive(q, w0, w1, 7)
  fit0, fit1 = np.asarray(q.fit(w0)[0]), np.asarray(q.fit(w1)[0])
  assert not np.allclose(fit0, fit1)
  # Calls with counter 0, 1, 2 keep the init levels; the call with counter 3 (the K-th training
  # step) re-fits; counter 6 re-fits again (same weights, same levels).
  for calls in range(0, 4):
    np.testing.assert_array_equal(history[calls], fit0)
  for calls in range(4, 8):
    np.testing.assert_array_equal(history[calls], fit1)
  assert int(state["step"]) == 7
  # Evaluation never changes the state.
  _, same = q.apply(w1, {}, state, "weight", False)
  assert same is state


def test_recluster_zero_and_freeze():
  w0 = jnp.array([-0.5, -0.25, 0.0, 0.25, 0.5, 0.4, -0.4, 0.1])
  w1 = 0.5 * w0 + 0.1
  never, _ = _drive(_nuuq(num_levels=3, recluster_every=0), w0, w1, 4)
  assert all(np.array_equal(h, never[0]) for h in never)
  # Re-fit at counter 2 (to w1's levels), then frozen from counter 3: w2 at counter 4 is ignored.
  q = _nuuq(num_levels=3, recluster_every=2, freeze_at=3)
  _, state = q.init(w0, "weight")
  for w in (w0, w0, w1, w1, 3 * w1):
    state = _train_step(q, w, state)
  np.testing.assert_array_equal(state["levels"], q.fit(w1)[0])


@pytest.mark.parametrize("estimator", ["ste", "clipped_ste"])
def test_gradient_matches_straight_through_reference(estimator):
  q = _nuuq(num_levels=3, container_bits=4, estimator=estimator)
  w = jnp.array([-0.6, -0.5, -0.45, -0.1, 0.0, 0.05, 0.4, 0.45, 0.49])
  _, state = q.init(w, "weight")
  upstream = jnp.arange(1.0, 10.0)
  fq = lambda v: q.apply(v, {}, state, "weight", True)[0]  # noqa: E731
  got, ref = jax.jit(lambda v: (
      jax.grad(lambda u: jnp.sum(fq(u) * upstream))(v),
      jax.grad(lambda u: jnp.sum((u + jax.lax.stop_gradient(fq(u) - u)) * upstream))(v)))(w)
  if estimator == "ste":
    np.testing.assert_array_equal(got, ref)
  else:
    lo, hi = float(state["levels"][0]), float(state["levels"][-1])
    inside = (np.asarray(w) >= lo) & (np.asarray(w) <= hi)
    assert not inside.all()
    np.testing.assert_array_equal(got, np.where(inside, ref, 0.0))


@pytest.mark.parametrize(
    ("fields", "match"),
    [({"num_levels": 1}, "num_levels=1 is out of range"),
     ({"num_levels": 8, "container_bits": 3}, "num_levels=8 .*2 to 7"),
     ({"container_bits": 17}, "container_bits=17"),
     ({"grid": "log"}, "grid='log'.*pow2, max"),
     ({"recluster_every": -1}, "recluster_every=-1"),
     ({"bits": 4}, "no field.*bits.*container_bits")],
)
def test_bad_configs_raise_one_line_errors(fields, match):
  with pytest.raises(ValueError, match=match) as e:
    _nuuq(**fields)
  assert "\n" not in str(e.value)


def test_activations_rejected():
  with pytest.raises(ValueError, match="weights only"):
    _nuuq().validate_role("act")


# -- properties ----------------------------------------------------------------------------------


@functools.partial(jax.jit, static_argnums=0)
def _quantize_twice(q, w):
  """Q(w) with the table fitted on w, Q(Q(w)) with that table frozen, and the index entropy."""
  out, state = _init_and_quantize(q, w)
  again = q.apply(out, {}, state, "weight", False)[0]
  return out, again, state["levels"], nuuq.index_stats(w, state)["entropy_bits"]


@settings(max_examples=30, deadline=None)
@given(st.lists(st.floats(-4, 4, allow_nan=False, width=32), min_size=24, max_size=24),
       st.sampled_from([(2, 3, "pow2"), (3, 4, "pow2"), (5, 4, "max"), (6, 8, "pow2")]))
def test_properties(values, config):
  levels, bits, grid = config
  q = _nuuq(num_levels=levels, container_bits=bits, grid=grid)
  w = jnp.asarray(values, jnp.float32)
  out, again, table, entropy = map(np.asarray, _quantize_twice(q, w))
  order = np.argsort(np.asarray(w), kind="stable")
  assert np.all(np.diff(out[order]) >= 0)  # monotone non-decreasing
  assert set(np.unique(out)) <= set(table)  # on the level set
  assert len(np.unique(out)) <= levels
  np.testing.assert_array_equal(again, out)  # idempotent with the table frozen in the state
  assert float(entropy) <= math.log2(levels) + 1e-6


# -- through the interceptor ---------------------------------------------------------------------

_OPERANDS = []  # (layer kind, lhs, rhs) as the lax primitives receive them


def _record(kind, primitive):
  def call(lhs, rhs, *args, **kwargs):
    _OPERANDS.append((kind, lhs, rhs))
    return primitive(lhs, rhs, *args, **kwargs)
  return call


class ConvDense(nn.Module):
  @nn.compact
  def __call__(self, x):  # x: [B, 5, 5, 1]
    x = nn.relu(nn.Conv(3, (3, 3), name="conv",
                        conv_general_dilated=_record("conv", jax.lax.conv_general_dilated))(x))
    return nn.Dense(2, name="fc", dot_general=_record("dense", jax.lax.dot_general))(
        x.reshape(x.shape[0], -1))


def test_through_the_interceptor():
  model = ConvDense()
  x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 5, 5, 1)), jnp.float32)
  layers = intercept.discover_layers(model, x)
  spec = {"name": "nuuq", "num_levels": 3, "container_bits": 4, "recluster_every": 1}
  plan = intercept.resolve(layers, weight=spec, act=None)
  variables = jax.jit(intercept.quantized_init(model, plan))(jax.random.key(1), x)
  assert set(variables["quant_state"]["fc"]) == {"kernel_levels", "kernel_grid_step", "kernel_step"}

  @jax.jit
  def run(variables):
    _OPERANDS.clear()
    _, evaluated = intercept.quantized_apply(model, plan, training=False)(
        variables, x, mutable=["quant_state"])
    kernels = [rhs for _, _, rhs in _OPERANDS]  # traced here, returned as outputs
    _OPERANDS.clear()

    def loss(params):  # as in the train step: a training apply under grad
      out, updates = intercept.quantized_apply(model, plan, training=True)(
          {**variables, "params": params}, x, mutable=["quant_state"])
      return jnp.sum(out**2), updates

    grads, trained = jax.grad(loss, has_aux=True)(variables["params"])
    return kernels, grads, trained, evaluated

  kernels, grads, trained, evaluated = run(variables)
  assert len(kernels) == 2
  for kernel, layer in zip(kernels, ("conv", "fc"), strict=True):
    table = np.asarray(variables["quant_state"][layer]["kernel_levels"])
    assert kernel.shape == variables["params"][layer]["kernel"].shape
    assert set(np.unique(np.asarray(kernel))) <= set(table)
    assert len(np.unique(np.asarray(kernel))) <= 3
  for layer in ("conv", "fc"):
    assert np.all(np.isfinite(grads[layer]["kernel"])) and np.any(grads[layer]["kernel"] != 0)
  # Training writes the state back (counter 0 -> 1); evaluation leaves it as it was.
  assert int(trained["quant_state"]["fc"]["kernel_step"]) == 1
  assert int(evaluated["quant_state"]["fc"]["kernel_step"]) == 0
