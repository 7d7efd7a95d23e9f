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
  def is_kernel(path, _):  # a flattened vector (`partitioned`) has no path: quantizer params
    return bool(path) and getattr(path[-1], "key", None) == "kernel"

  return jax.tree_util.tree_map_with_path(is_kernel, params)


def partitioned(tx: optax.GradientTransformation, quantizer_mask=None
                ) -> optax.GradientTransformation:
  """`tx` with the quantizers' parameters updated as one flat vector (`optax.flatten`).

  A quantized model carries a few small quantizer parameters per layer (per-channel scales,
  clipping levels); updated leaf by leaf, each adds its own small programs to the training step
  (on LeNet-5 W8A8, 28 of the step's 186 XLA fusions), which cost more than their arithmetic.
  Flattened they are one. `tx` must act elementwise on them (SGD, Adam: the same updates either
  way); weight decay never applies to them (`_decay_mask`). `quantizer_mask`:
  `quantjax.intercept.quantizer_params` of the model's params; None or all False: `tx` itself.
  """
  if quantizer_mask is None or not any(jax.tree_util.tree_leaves(quantizer_mask)):
    return tx
  labels = jax.tree_util.tree_map(lambda q: "quantizer" if q else "model", quantizer_mask)
  return optax.multi_transform({"model": tx, "quantizer": optax.flatten(tx)}, labels)


def make_optimizer(config, steps_per_epoch: int,
                   quantizer_mask=None) -> optax.GradientTransformation:
  """SGD with (Nesterov) momentum, Adam, or AdamW, with decoupled/masked weight decay.

  The quantizers' parameters (`quantizer_mask`, see `partitioned`) are updated as one flat
  vector; gradient clipping is over all parameters together.
  """
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
  tx = partitioned(tx, quantizer_mask)
  if config.get("grad_clip_norm"):
    tx = optax.chain(optax.clip_by_global_norm(config.grad_clip_norm), tx)
  return tx
