"""Pure train and eval steps; the quantization plan is applied inside them (so inside jit)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax import traverse_util

from quantjax.intercept import QUANT_LOSSES, QUANT_STATE, QuantPlan, quantized_apply
from quantjax.train.state import TrainState

Batch = dict[str, jax.Array]


def cross_entropy(logits: jax.Array, labels: jax.Array, num_classes: int) -> jax.Array:
  """Mean softmax cross-entropy with integer labels."""
  onehot = jax.nn.one_hot(labels, num_classes)
  return optax.softmax_cross_entropy(logits, onehot).mean()


def make_train_step(model: nn.Module, plan: QuantPlan | None, num_classes: int, seed: int,
                    aux_loss_weight: float = 0.0, conv_kernel_grad: str = "auto"
                    ) -> Callable[[TrainState, Batch], tuple[TrainState, dict]]:
  """Returns `train_step(state, batch) -> (state, metrics)`, pure, to be jitted.

  Quantizers' auxiliary losses (ESB's distribution difference) are added with `aux_loss_weight`
  and reported per layer as `aux/<layer>/<kernel|input>_loss`. `conv_kernel_grad`: how the
  convolutions' kernel gradient is computed (`quantjax.intercept.conv`).
  """
  apply = quantized_apply(model, plan, training=True, conv_kernel_grad=conv_kernel_grad)
  base_key = jax.random.key(seed)

  def train_step(state: TrainState, batch: Batch) -> tuple[TrainState, dict[str, Any]]:
    dropout_key = jax.random.fold_in(base_key, state.step)
    mutable = [c for c in ("batch_stats", QUANT_STATE) if c in state.variables()]
    mutable.append(QUANT_LOSSES)

    def loss_fn(params):
      logits, updates = apply(
          state.variables(params), batch["image"], train=True,
          rngs={"dropout": dropout_key}, mutable=mutable,
      )  # logits: [B, num_classes]
      task_loss = cross_entropy(logits, batch["label"], num_classes)
      aux = {k: sum(v) for k, v in traverse_util.flatten_dict(
          updates.get(QUANT_LOSSES, {}), sep="/").items()}
      loss = task_loss + aux_loss_weight * sum(aux.values()) if aux else task_loss
      return loss, (logits, updates, task_loss, aux)

    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
    (loss, (logits, updates, task_loss, aux)), grads = grad_fn(state.params)
    state = state.apply_gradients(grads=grads)
    state = state.replace(
        batch_stats=updates.get("batch_stats", state.batch_stats),
        quant_state=updates.get(QUANT_STATE, state.quant_state),
    )
    metrics = {
        "loss": loss,
        "accuracy": jnp.mean(jnp.argmax(logits, -1) == batch["label"]),
        "grad_norm": optax.global_norm(grads),
    }
    if aux:
      metrics["task_loss"] = task_loss
      metrics.update({f"aux/{k}": v for k, v in aux.items()})
    return state, metrics

  return train_step


def make_eval_step(model: nn.Module, plan: QuantPlan | None,
                   num_classes: int) -> Callable[[Any, Batch], dict[str, jax.Array]]:
  """Returns `eval_step(variables, batch) -> sums` over the real (mask=1) examples."""
  apply = quantized_apply(model, plan, training=False)

  def eval_step(variables: dict[str, Any], batch: Batch) -> dict[str, jax.Array]:
    logits = apply(variables, batch["image"], train=False)  # [B, num_classes]
    mask = batch["mask"]
    losses = optax.softmax_cross_entropy(logits, jax.nn.one_hot(batch["label"], num_classes))
    correct = (jnp.argmax(logits, -1) == batch["label"]).astype(jnp.float32)
    return {
        "loss_sum": jnp.sum(losses * mask),
        "correct": jnp.sum(correct * mask),
        "count": jnp.sum(mask),
    }

  return eval_step
