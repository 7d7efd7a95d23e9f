"""Learning-rate schedule and weight-decay mask."""

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
