"""Learning-rate schedule and weight-decay mask."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from quantjax.train import optimizer


def _config(**kw):
  c = ml_collections.ConfigDict(dict(num_epochs=10, warmup_epochs=1.0, learning_rate=0.1,
                                     schedule="cosine", optimizer="sgd", momentum=0.9,
                                     weight_decay=0.5))
  c.update(kw)
  return c


def test_warmup_then_cosine_to_zero():
  sched = optimizer.learning_rate_schedule(_config(), steps_per_epoch=10)
  np.testing.assert_allclose([sched(0), sched(5), sched(10)], [0.0, 0.05, 0.1], atol=1e-7)
  np.testing.assert_allclose(sched(55), 0.05, atol=1e-6)  # half way through the cosine
  np.testing.assert_allclose(sched(100), 0.0, atol=1e-7)


def test_weight_decay_only_on_kernels():
  params = {"conv": {"kernel": jnp.ones(2), "bias": jnp.ones(2), "kernel_scale": jnp.ones(())}}
  tx = optimizer.make_optimizer(_config(momentum=0.0, warmup_epochs=0.0, schedule="constant"),
                                steps_per_epoch=1)
  zero_grads = {"conv": {"kernel": jnp.zeros(2), "bias": jnp.zeros(2),
                         "kernel_scale": jnp.zeros(())}}
  updates, _ = tx.update(zero_grads, tx.init(params), params)
  new = optax.apply_updates(params, updates)
  np.testing.assert_allclose(new["conv"]["kernel"], 1 - 0.1 * 0.5)
  np.testing.assert_allclose(new["conv"]["bias"], 1.0)
  np.testing.assert_allclose(new["conv"]["kernel_scale"], 1.0)


def test_unknown_optimizer():
  with pytest.raises(ValueError, match="optimizer='rmsprop' is not valid"):
    optimizer.make_optimizer(_config(optimizer="rmsprop"), steps_per_epoch=1)


@pytest.mark.parametrize("name", ["sgd", "adam", "adamw"])
def test_quantizer_params_as_one_vector_update_like_leaf_by_leaf(name):
  # Three steps on random gradients: the partitioned optimizer (quantizer parameters flattened)
  # gives every leaf the update the plain one gives, and no decay on the quantizer parameters.
  rng = np.random.default_rng(0)
  params = {"conv": {"kernel": jnp.ones((3, 2)), "bias": jnp.ones(2),
                     "kernel_scale": jnp.full(2, 0.5), "input_scale": jnp.asarray(0.25)},
            "fc": {"kernel": jnp.ones((2, 2)), "kernel_scale": jnp.full(2, 0.1)}}
  mask = {"conv": {"kernel": False, "bias": False, "kernel_scale": True, "input_scale": True},
          "fc": {"kernel": False, "kernel_scale": True}}
  config = _config(optimizer=name, warmup_epochs=0.0, schedule="constant", learning_rate=0.01)
  plain = optimizer.make_optimizer(config, steps_per_epoch=1)
  split = optimizer.make_optimizer(config, steps_per_epoch=1, quantizer_mask=mask)
  assert type(split.init(params)) is not type(plain.init(params))  # it is partitioned
  steps = [jax.tree_util.tree_map(
      lambda v: jnp.asarray(rng.normal(size=np.shape(v)), jnp.float32), params) for _ in range(3)]
  results = []
  for tx in (plain, split):
    p, state = params, tx.init(params)
    for grads in steps:
      updates, state = tx.update(grads, state, p)
      p = optax.apply_updates(p, updates)
    results.append(p)
  for a, b in zip(*(jax.tree_util.tree_leaves(r) for r in results), strict=True):
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
  assert optimizer.partitioned(plain, None) is plain
  assert optimizer.partitioned(plain, {"a": False}) is plain


def test_quantizer_params_are_what_the_plan_added():
  import flax.linen as nn

  from quantjax.intercept import quantizer_params

  class Net(nn.Module):
    @nn.compact
    def __call__(self, x, train=False):
      return nn.Dense(3, name="fc")(nn.Dense(4, name="hidden")(x))

  params = {"hidden": {"kernel": jnp.ones((2, 4)), "bias": jnp.ones(4),
                       "kernel_scale": jnp.ones(4)},
            "fc": {"kernel": jnp.ones((4, 3)), "bias": jnp.ones(3), "input_scale": jnp.ones(())}}
  mask = quantizer_params(Net(), params, jnp.ones((1, 2)), train=False)
  assert mask == {"hidden": {"kernel": False, "bias": False, "kernel_scale": True},
                  "fc": {"kernel": False, "bias": False, "input_scale": True}}
