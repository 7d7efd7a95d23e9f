"""`TrainState.apply_fn` is the quantized model, never the float `model.apply`."""

import jax
import jax.numpy as jnp
import numpy as np

from quantjax.intercept import quantized_apply
from quantjax.train import experiment, loop
from tests.train.conftest import tiny_run_config


def test_apply_fn_applies_the_plan(data_dir):
  config = tiny_run_config(data_dir)
  exp = experiment.build(config)
  images = jax.random.uniform(jax.random.key(0), (8, 28, 28, 1))  # [B, H, W, C]
  state = loop.init_state(exp, config, {"image": images}, steps_per_epoch=10)
  variables = state.variables()

  logits = state.apply_fn(variables, images, train=False)
  fake_quant = quantized_apply(exp.model, exp.plan, training=False)(variables, images, train=False)
  np.testing.assert_array_equal(logits, fake_quant)
  float_logits = exp.model.apply({"params": variables["params"]}, images, train=False)
  assert float(jnp.max(jnp.abs(logits - float_logits))) > 1e-3  # the plan changed the outputs


def test_checkpoint_of_another_optimizer_layout_is_a_one_line_error(data_dir, tmp_path):
  # A quantized run's checkpoint from before the quantizers' parameters were updated as one
  # vector (the plain optimizer) does not resume into today's state; the error says why and what
  # to do, and the checkpoint stays where it was.
  import os

  import optax
  import pytest

  from quantjax.train import checkpoint
  from quantjax.workdir import Workdir

  config = tiny_run_config(data_dir)
  exp = experiment.build(config)
  images = jax.random.uniform(jax.random.key(0), (8, 28, 28, 1))
  state = loop.init_state(exp, config, {"image": images}, steps_per_epoch=10)
  wd = Workdir(str(tmp_path / "run"))
  wd.create()
  old = state.replace(tx=optax.adam(1e-3), opt_state=optax.adam(1e-3).init(state.params))
  mngr = checkpoint.manager(wd)
  checkpoint.save(mngr, wd, old)
  mngr.wait_until_finished()
  with pytest.raises(ValueError, match=r"cannot be restored: .* laid out otherwise: written by "
                                       r"another quantjax version.*--config.init_from\)$"):
    checkpoint.restore_into(mngr, state, 0)
  mngr.close()
  assert os.listdir(wd.checkpoints_dir) == ["0"]
