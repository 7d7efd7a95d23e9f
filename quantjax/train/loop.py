"""`train_and_evaluate`: quantization-aware (or float) training with checkpoints and resume."""

from __future__ import annotations

import math
import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging
from flax import traverse_util

from quantjax import data
from quantjax.intercept import QUANT_STATE, quantized_apply, quantized_init
from quantjax.train import checkpoint, evaluate, experiment, optimizer, sharding, steps
from quantjax.train.metrics import MetricWriter, Progress
from quantjax.train.state import TrainState


class NaNLossError(RuntimeError):
  """The loss became NaN or infinite; the last good checkpoint is kept."""


def init_state(exp: experiment.Experiment, config, first_batch: dict[str, Any],
               steps_per_epoch: int, *, resuming: bool = False) -> TrainState:
  """Initial TrainState; quantizer variables are initialised from `first_batch` and the weights.

  With `config.init_from` (a float run's workdir), model weights and BatchNorm statistics come
  from its latest checkpoint, and quantizer variables are then calibrated from those weights.
  When `resuming`, the workdir's own checkpoint replaces all of it, so init_from is not read.
  """
  images = jnp.asarray(first_batch["image"])
  rngs = {"params": jax.random.key(config.seed), "dropout": jax.random.key(config.seed + 1)}
  # Jitted: run eagerly, every quantizer op would compile (and keep) its own tiny executable,
  # hundreds of MiB for the log-domain quantizers.
  init = jax.jit(lambda r, x: quantized_init(exp.model, exp.plan)(r, x, train=False))
  variables = dict(init(rngs, images))
  if config.get("init_from") and not resuming:
    pretrained, step = checkpoint.restore_variables(config.init_from)
    logging.info("initialising weights from %s (step %d)", config.init_from, step)
    variables = _load_pretrained(exp, variables, pretrained, rngs, images)
  return TrainState.create(
      apply_fn=exp.model.apply,
      params=variables["params"],
      tx=optimizer.make_optimizer(config, steps_per_epoch),
      batch_stats=variables.get("batch_stats", {}),
      quant_state=variables.get(QUANT_STATE, {}),
  )


def _load_pretrained(exp, variables, pretrained, rngs, images):
  """Copies the model's float weights from `pretrained`, then calibrates the quantizers on them.

  Quantizer variables of the checkpoint (if it was itself quantized) are not reused: they are
  recreated by one calibration pass over `images` with the loaded weights.
  """
  float_shapes = jax.eval_shape(lambda: exp.model.init(rngs, images, train=False))
  loaded = {}
  for collection in ("params", "batch_stats"):
    if collection not in float_shapes:
      continue
    flat_ref = traverse_util.flatten_dict(float_shapes[collection], sep="/")
    flat_src = traverse_util.flatten_dict(pretrained.get(collection) or {}, sep="/")
    missing = sorted(set(flat_ref) - set(flat_src))
    if missing:
      raise ValueError(f"init_from checkpoint lacks {collection} {', '.join(missing[:5])} of "
                       f"model {exp.config.model!r}")
    for key, ref in flat_ref.items():
      if tuple(np.shape(flat_src[key])) != tuple(ref.shape):
        raise ValueError(f"init_from checkpoint has {collection} {key} of shape "
                         f"{np.shape(flat_src[key])}, model {exp.config.model!r} needs {ref.shape}")
    loaded[collection] = traverse_util.unflatten_dict(
        {k: jnp.asarray(flat_src[k]) for k in flat_ref}, sep="/")
  if not exp.plan:
    return {**variables, **loaded}
  apply = quantized_apply(exp.model, exp.plan, training=False)
  calibrate = jax.jit(lambda v, x, r: apply(v, x, train=False, rngs=r,
                                            mutable=["params", QUANT_STATE])[1])
  return {**loaded, **calibrate(loaded, images, rngs)}


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Trains (resuming from `workdir` if it holds checkpoints), evaluates, writes summary.json.

  Returns:
    The summary dict (also written to `<workdir>/summary.json`).
  """
  exp = experiment.build(config)  # every name and value checked before any work
  checkpoint.check_compatible(config, workdir)
  mesh = sharding.make_mesh(config.get("num_devices", 0))
  sharding.check_batch_size(config.batch_size, mesh)
  sharding.check_batch_size(config.eval_batch_size, mesh, "eval_batch_size")
  batch_sharding, replicated = sharding.batch_sharding(mesh), sharding.replicated(mesh)

  ds = exp.dataset
  steps_per_epoch = ds.num_examples("train") // config.batch_size
  if steps_per_epoch < 1:
    raise ValueError(f"batch_size={config.batch_size} exceeds the {ds.num_examples('train')} "
                     "training examples")
  total_steps = int(math.ceil(config.num_epochs * steps_per_epoch))

  first = next(ds.train_batches(batch_size=config.batch_size, seed=config.seed,
                                augment="none"))
  state = init_state(exp, config, first, steps_per_epoch,
                     resuming=checkpoint.has_checkpoints(workdir))
  state = jax.device_put(state, replicated)
  mngr = checkpoint.manager(workdir, max_to_keep=config.get("keep_checkpoints", 3))
  state = checkpoint.restore_into(mngr, state)
  start_step = int(jax.device_get(state.step))
  lead = jax.process_index() == 0  # one host writes the workdir's files (orbax coordinates its own)
  if lead:
    checkpoint.record_config(config, workdir)
  if start_step:
    logging.info("resumed from %s at step %d", workdir, start_step)

  train_step = jax.jit(
      steps.make_train_step(exp.model, exp.plan, exp.num_classes, config.seed,
                            aux_loss_weight=float(config.get("dda", {}).get("weight", 0.0))),
      in_shardings=(replicated, batch_sharding),
      out_shardings=(replicated, replicated),
      donate_argnames=("state",),
  )
  writer = MetricWriter(workdir, tensorboard=config.get("tensorboard", True), enabled=lead)
  progress = Progress(start_step, total_steps)
  schedule = optimizer.learning_rate_schedule(config, steps_per_epoch)
  put = lambda b: jax.device_put(b, batch_sharding)  # noqa: E731
  batches = data.prefetch(
      ds.train_batches(batch_size=config.batch_size, seed=config.seed, start_step=start_step,
                       augment=config.augment),
      put=put,
  )
  log_every = max(int(config.log_every_steps), 1)
  ckpt_every = max(int(config.checkpoint_every_steps), 1)
  eval_every = int(config.get("eval_every_epochs", 0) * steps_per_epoch)
  train_start = time.perf_counter()
  pending: list[dict[str, jax.Array]] = []
  step = start_step
  try:
    for step in range(start_step + 1, total_steps + 1):
      state, metrics = train_step(state, next(batches))
      pending.append(metrics)
      boundary = step % log_every == 0 or step % ckpt_every == 0 or step == total_steps
      if boundary:
        fetched = jax.device_get(pending)  # one transfer for the whole interval
        means = {k: float(np.mean([m[k] for m in fetched])) for k in fetched[0]}
        if not all(math.isfinite(v) for v in means.values()):
          raise NaNLossError(
              f"loss is {means['loss']} at step {step}; stopped, the last good checkpoint "
              f"({mngr.latest_step()}) is kept in {workdir}")
        pending.clear()
        if step % log_every == 0 or step == total_steps:
          writer.write(step, {**means, **progress(step), "learning_rate": schedule(step)},
                       prefix="train/")
        if step % ckpt_every == 0 or step == total_steps:
          checkpoint.save(mngr, state)
      if eval_every and step % eval_every == 0 and step != total_steps:
        result = evaluate.evaluate_variables(exp, state.variables(), "validation",
                                             config.eval_batch_size, mesh)
        writer.write(step, result, prefix="validation/")
  finally:
    mngr.wait_until_finished()
    batches.close()
  train_seconds = time.perf_counter() - train_start

  results = {split: evaluate.evaluate_variables(exp, state.variables(), split,
                                                config.eval_batch_size, mesh)
             for split in ("validation", "test")}
  for split, result in results.items():
    writer.write(total_steps, result, prefix=f"{split}/")
  writer.close()
  summary = evaluate.make_summary(exp, results, step=total_steps, variables=state.variables(),
                                  train_seconds=train_seconds, resumed_from=start_step)
  if lead:
    checkpoint.write_json_atomic(os.path.join(workdir, "summary.json"), summary)
  logging.info("test accuracy %.4f (validation %.4f); summary in %s",
               results["test"]["accuracy"], results["validation"]["accuracy"], workdir)
  return summary
