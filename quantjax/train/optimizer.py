"""The optax optimizer and learning-rate schedule built from the config."""

from __future__ import annotations

import jax
import optax

OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULES = ("cosine", "constant")


def learning_rate_schedule(config, steps_per_epoch: int) -> optax.Schedule:
  """Linear warm-up then cosine decay to zero (or constant), in optimizer steps."""
  total = max(config.num_epochs * steps_per_epoch, 1)
  warmup = min(int(config.warmup_epochs * steps_per_epoch), total - 1)
  if config.schedule == "constant":
    main = optax.constant_schedule(config.learning_rate)
  else:
    main = optax.cosine_decay_schedule(config.learning_rate, decay_steps=max(total - warmup, 1))
  if warmup <= 0:
    return main
  ramp = optax.linear_schedule(0.0, config.learning_rate, warmup)
  return optax.join_schedules([ramp, main], boundaries=[warmup])


def _decay_mask(params):
  """Weight decay on kernels only: not on biases, BatchNorm or quantizer parameters."""
  def is_kernel(path, _):
    return getattr(path[-1], "key", None) == "kernel"

  return jax.tree_util.tree_map_with_path(is_kernel, params)


def make_optimizer(config, steps_per_epoch: int) -> optax.GradientTransformation:
  """SGD with (Nesterov) momentum, Adam, or AdamW, with decoupled/masked weight decay."""
  schedule = learning_rate_schedule(config, steps_per_epoch)
  if config.optimizer == "sgd":
    tx = optax.chain(
        optax.add_decayed_weights(config.weight_decay, mask=_decay_mask),
        optax.sgd(schedule, momentum=config.momentum, nesterov=True),
    )
  elif config.optimizer == "adam":
    tx = optax.chain(
        optax.add_decayed_weights(config.weight_decay, mask=_decay_mask),
        optax.adam(schedule),
    )
  elif config.optimizer == "adamw":
    tx = optax.adamw(schedule, weight_decay=config.weight_decay, mask=_decay_mask)
  else:
    raise ValueError(
        f"optimizer={config.optimizer!r} is not valid; choose one of {', '.join(OPTIMIZERS)}")
  if config.get("grad_clip_norm"):
    tx = optax.chain(optax.clip_by_global_norm(config.grad_clip_norm), tx)
  return tx
