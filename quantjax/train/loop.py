"""`train_and_evaluate`: quantization-aware (or float) training with checkpoints and resume."""

from __future__ import annotations

import contextlib
import math
import os
import signal
import threading
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging
from flax import traverse_util

from quantjax import data, host_memory
from quantjax.intercept import QUANT_STATE, quantized_apply, quantized_init, quantizer_params
from quantjax.reports import progress as progress_bar
from quantjax.train import (
  checkpoint,
  dispatch,
  distributed,
  evaluate,
  experiment,
  optimizer,
  preemption,
  sharding,
  steps,
  summaries,
)
from quantjax.train.metrics import MetricWriter, Progress
from quantjax.train.state import TrainState
from quantjax.workdir import Workdir, environment


class NaNLossError(RuntimeError):
  """The loss became NaN or infinite; the last good checkpoint is kept."""


def init_state(exp: experiment.Experiment, config, first_batch: dict[str, Any],
               steps_per_epoch: int, *, resuming: bool = False) -> TrainState:
  """Initial TrainState; quantizer variables are initialised from `first_batch` and the weights.

  With `config.init_from` (a float run's workdir), model weights and BatchNorm statistics come
  from its latest checkpoint, and quantizer variables are then calibrated from those weights.
  When `resuming`, the workdir's own checkpoint replaces all of it, so init_from is not read.
  """
  images = jax.device_put(first_batch["image"])
  rngs = {"params": jax.random.key(config.seed), "dropout": jax.random.key(config.seed + 1)}
  # Jitted: run eagerly, every quantizer op would compile (and keep) its own tiny executable,
  # hundreds of MiB for the log-domain quantizers.
  init = jax.jit(lambda r, x: quantized_init(exp.model, exp.plan)(r, x, train=False))
  variables = dict(init(rngs, images))
  if config.get("init_from") and not resuming:
    pretrained, step = checkpoint.restore_variables(config.init_from)
    logging.info("initialising weights from %s (step %d)", config.init_from, step)
    variables = _load_pretrained(exp, variables, pretrained, rngs, images)
  # A float run has no quantizer parameters: no shape evaluation of the model for it.
  mask = quantizer_params(exp.model, variables["params"], images, train=False) if exp.plan else None
  return TrainState.create(
      apply_fn=quantized_apply(exp.model, exp.plan, training=None),  # never the float apply
      params=variables["params"],
      tx=optimizer.make_optimizer(config, steps_per_epoch, mask),
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
        {k: jax.device_put(flat_src[k]) for k in flat_ref}, sep="/")
  if not exp.plan:
    return {**variables, **loaded}
  apply = quantized_apply(exp.model, exp.plan, training=False)
  calibrate = jax.jit(lambda v, x, r: apply(v, x, train=False, rngs=r,
                                            mutable=["params", QUANT_STATE])[1])
  return {**loaded, **calibrate(loaded, images, rngs)}


@host_memory.released_after_compiles()
def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Trains (resuming from `workdir` if it holds checkpoints), evaluates, writes summary.json.

  The workdir's config.json is the record of the run: a resume may change only the safe fields
  of `quantjax.workdir.record` (recorded as amendments), and a finished run is returned as it
  is. SIGTERM or SIGINT saves the current step and raises `Preempted`.

  With several processes (`quantjax.train.distributed`) every process calls this with the same
  config and workdir; process 0 writes the workdir's files, each process feeds its rows of each
  batch, and a signal is acted on at the next log or checkpoint step, where the processes agree.

  Returns:
    The summary dict (also written to `<workdir>/summary.json`).

  Raises:
    ValueError: a bad config, an incompatible or damaged workdir, or one in use (one line).
    NaNLossError: the loss became NaN or infinite (the last good checkpoint is kept).
    Preempted: a signal stopped the run after saving its current step.
  """
  # Every name and value checked before any work; a dataset prepared by one process.
  # Several processes: jax.distributed has started JAX, which one process alone must not.
  build = lambda: experiment.build(config)  # noqa: E731
  exp = distributed.lead_first(build) if jax.distributed.is_initialized() else build()
  experiment.choose_cpu_devices(config, exp)  # building it started no backend
  lead = distributed.is_lead()  # one process writes the workdir's files (Orbax its arrays)
  wd = Workdir(workdir, writer=lead)
  mesh = sharding.make_mesh(config.get("num_devices", 0))
  sharding.check_batch_size(config.batch_size, mesh)
  sharding.check_batch_size(config.eval_batch_size, mesh, "eval_batch_size")
  steps_per_epoch = exp.dataset.num_examples("train") // config.batch_size
  if steps_per_epoch < 1:
    raise ValueError(f"batch_size={config.batch_size} exceeds the "
                     f"{exp.dataset.num_examples('train')} training examples")
  total_steps = int(math.ceil(config.num_epochs * steps_per_epoch))
  with contextlib.ExitStack() as held:

    def create_and_lock() -> None:
      wd.create()
      held.enter_context(wd.lock())

    # Process 0 creates and locks the workdir; its error (in use, not writable) ends them all.
    distributed.on_lead(create_and_lock)
    stop = held.enter_context(preemption.StopOnSignal())
    changes, finished = _resume_check(wd, config, total_steps)
    if finished is not None:
      logging.info("%s holds the finished run (step %d); nothing to do", workdir, total_steps)
      return finished
    return _train(exp, config, wd, mesh, steps_per_epoch, total_steps, changes, stop, lead)


def _resume_check(wd: Workdir, config, total_steps: int):
  """(safe changes to the record, the summary if the run is finished); raises on a conflict."""
  if not wd.has_checkpoints():
    if os.path.exists(wd.summary_file):
      raise ValueError(f"workdir {wd.path!r} holds summary.json but no checkpoints; use a new "
                       "--workdir")
    return [], None
  if not wd.has_config():
    raise ValueError(f"workdir {wd.path!r} holds checkpoints but no config.json, so what they "
                     "hold is unknown; restore config.json or use a new --workdir")
  changes = wd.resume_changes(config)
  summary = wd.read_summary()
  if summary is not None and summary.get("step") == total_steps:
    return changes, summary
  return changes, None


def _train(exp, config, wd: Workdir, mesh, steps_per_epoch: int, total_steps: int, changes,
           stop: preemption.StopOnSignal, lead: bool) -> dict[str, Any]:
  batch_sharding, replicated = sharding.batch_sharding(mesh), sharding.replicated(mesh)
  ds = exp.dataset
  # Process 0 decides (and sets damaged steps aside); the others restore what it chose.
  restore_step = distributed.from_lead(lambda: wd.intact_step(fall_back=True, set_aside=True))
  # The whole first batch, in every process: the quantizers' initial ranges come from it.
  first = next(ds.train_batches(batch_size=config.batch_size, seed=config.seed,
                                augment="none"))
  state = init_state(exp, config, first, steps_per_epoch, resuming=restore_step is not None)
  state = sharding.replicate(state, mesh)
  mngr = checkpoint.manager(wd, max_to_keep=config.get("keep_checkpoints", 3))
  if restore_step is not None:
    state = checkpoint.restore_into(mngr, state, restore_step)
  start_step = int(jax.device_get(state.step))
  if lead:
    if restore_step is None:
      wd.record_config(config)
    elif changes:
      wd.amend(changes, start_step)
      logging.warning("resuming %s with amended %s", wd.path,
                      ", ".join(f"{f}: {o} -> {n}" for f, o, n in changes))
    moved = wd.record_environment(environment.current(mesh.devices.size), start_step)
    if moved:
      logging.warning("resuming %s at step %d with another %s than before: the result will not "
                      "repeat an uninterrupted run's bit for bit", wd.path, start_step,
                      ", ".join(f"{f} ({o} -> {n})" for f, o, n in moved))
  if start_step:
    logging.info("resumed from %s at step %d", wd.path, start_step)

  train_step = jax.jit(
      steps.make_train_step(exp.model, exp.plan, exp.num_classes, config.seed,
                            aux_loss_weight=float(config.get("dda", {}).get("weight", 0.0)),
                            conv_kernel_grad=config.get("conv_kernel_grad", "auto")),
      in_shardings=(replicated, batch_sharding),
      out_shardings=(replicated, replicated),
      donate_argnames=("state",),
  )
  writer = MetricWriter(wd, tensorboard=config.get("tensorboard", True), enabled=lead,
                        resume_step=start_step, final=start_step == total_steps)
  if start_step == 0:  # a resume keeps the record written at its start
    writer.write_hparams(summaries.hparams(config),
                         ("train/loss", "validation/accuracy", "test/accuracy"))
  histogram_every = (int(config.get("histogram_every_steps", 0))
                     if exp.plan and lead and config.get("tensorboard", True) else 0)
  progress = Progress(start_step, total_steps)
  # For the log only. Jitted: called eagerly, its dozen jnp ops each compiled a program of its own
  # at the first log (about 1 s and 10 MiB of a LeNet-5 run on 2 cores).
  schedule = jax.jit(optimizer.learning_rate_schedule(config, steps_per_epoch))
  # Global batches: each process reads its rows (host pipeline) or makes them (device pipeline).
  batches = data.prefetch(
      ds.train_batches(batch_size=config.batch_size, seed=config.seed, start_step=start_step,
                       augment=config.augment, pipeline=config.get("input_pipeline", "host"),
                       sharding=batch_sharding))
  window = dispatch.StepWindow()  # a few steps in flight, not a queue without bound
  several = jax.process_count() > 1
  log_every = int(config.log_every_steps)
  ckpt_every = int(config.checkpoint_every_steps)
  eval_every = int(config.get("eval_every_epochs", 0) * steps_per_epoch)
  train_start = time.perf_counter()
  pending: list[dict[str, jax.Array]] = []
  step = start_step
  # Drawn only on a terminal; the log's `train/eta=h:mm:ss` lines carry progress otherwise.
  steps_bar = progress_bar.bar(total=total_steps, initial=start_step, desc="train", unit="step",
                               enabled=lead)

  def last_good() -> str:
    latest = mngr.latest_step()
    return ("no checkpoint was saved before it" if latest is None else
            f"the last good checkpoint, step {latest}, is kept in {wd.checkpoints_dir}")

  try:
    for step in range(start_step + 1, total_steps + 1):
      state, metrics = train_step(state, next(batches))
      window.admit(metrics)
      pending.append(metrics)
      steps_bar.update(1)
      scheduled = step % log_every == 0 or step % ckpt_every == 0 or step == total_steps
      if several:  # one process must not stop alone: the others would wait for it forever
        signum = distributed.agree_on_signal(stop.signum) if scheduled else None
      else:
        signum = stop.signum
      stopping = signum is not None
      if stopping or scheduled:
        fetched = jax.device_get(pending)  # one transfer for the whole interval
        means = {k: float(np.mean([m[k] for m in fetched])) for k in fetched[0]}
        if not all(math.isfinite(v) for v in means.values()):
          raise NaNLossError(f"loss is {means['loss']} at step {step}; stopped, {last_good()}")
        pending.clear()
        if stopping or step % log_every == 0 or step == total_steps:
          steps_bar.set_postfix(loss=f"{means['loss']:.4g}", refresh=False)
          writer.write(step, {**means, **progress(step), "learning_rate": schedule(step)},
                       prefix="train/")
        if stopping or step % ckpt_every == 0 or step == total_steps:
          if not bool(_all_finite(state.params)):
            raise NaNLossError(f"parameters are not finite at step {step}; stopped, "
                               f"{last_good()}")
          checkpoint.save(mngr, wd, state)
        if stopping:
          raise preemption.Preempted(
              f"stopped by {_signal_name(signum, stop)} at step {step}: checkpoint saved in "
              f"{wd.step_dir(step)}; rerun the same command to resume", signum)
      if histogram_every and (step % histogram_every == 0 or step == total_steps):
        _write_histograms(writer, exp.plan, state, step)
      if eval_every and step % eval_every == 0 and step != total_steps:
        result = evaluate.evaluate_variables(exp, state.variables(), "validation",
                                             config.eval_batch_size, mesh)
        writer.write(step, result, prefix="validation/")
    train_seconds = time.perf_counter() - train_start
    steps_bar.close()
    signum = distributed.agree_on_signal(stop.signum)
    if signum is not None:
      raise preemption.Preempted(f"stopped by {_signal_name(signum, stop)} after the last step "
                                 f"({step}), before the final evaluation; rerun the same command "
                                 "to evaluate", signum)
    results = {split: evaluate.evaluate_variables(exp, state.variables(), split,
                                                  config.eval_batch_size, mesh)
               for split in ("validation", "test")}
    for split, result in results.items():
      writer.write(total_steps, result, prefix=f"{split}/")
  finally:
    steps_bar.close()
    mngr.wait_until_finished()
    mngr.close()
    batches.close()
    _join_prefetch_threads()
    writer.close()
  summary = evaluate.make_summary(exp, results, step=total_steps, variables=state.variables(),
                                  train_seconds=train_seconds, resumed_from=start_step,
                                  environments=wd.environments())
  if lead:
    wd.write_summary(summary)
  logging.info("test accuracy %.4f (validation %.4f); summary in %s",
               results["test"]["accuracy"], results["validation"]["accuracy"], wd.path)
  return summary


def _signal_name(signum: int, stop: preemption.StopOnSignal) -> str:
  name = signal.Signals(signum).name
  return name if stop.signum == signum else f"{name} (sent to another process)"


def _write_histograms(writer: MetricWriter, plan, state: TrainState, step: int) -> None:
  """Learned quantizer parameters and kernel level occupancy (see `summaries`).

  Computed from host copies on this process's default device: only process 0 writes them, and a
  program over the whole mesh would wait for the other processes.
  """
  params, quant_state = jax.device_get((state.params, state.quant_state))
  values, occupancy = summaries.quantizer_histograms(plan, params, quant_state)
  writer.write_histograms(step, values, {tag: summaries.occupancy_buckets(fractions)
                                         for tag, fractions in occupancy.items()})


@jax.jit
def _all_finite(tree) -> jax.Array:
  return jnp.all(jnp.asarray([jnp.all(jnp.isfinite(x)) for x in jax.tree_util.tree_leaves(tree)]))


def _join_prefetch_threads(timeout_s: float = 10.0) -> None:
  """Waits for the closed prefetcher's thread: one still in XLA at exit aborts the interpreter."""
  for thread in threading.enumerate():
    if thread.name == "quantjax-prefetch" and thread is not threading.current_thread():
      thread.join(timeout_s)
