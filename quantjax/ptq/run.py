"""`run(config, workdir)`: a post-training method from a float checkpoint to a quantized workdir.

`python train.py --config=configs/ptq_fixedpoint.py --config.init_from=runs/float --workdir=...`
(`config.mode = 'ptq'`) lands here. Nothing is trained: the float weights of `init_from` are
calibrated and searched on the **validation** split, and the result is written as an ordinary
workdir that `eval.py` evaluates like any other:

- `config.json`: the input config with `quant` replaced by the chosen per-layer quantizers (one
  rule per layer);
- `checkpoints/0`: the float weights plus the quantizer variables;
- `summary.json`: validation and test accuracy (the test split is read only here), bits per
  layer, the cost model, and the method's own figures under `ptq`;
- `ptq_report.md` / `ptq_report.json`: the method's per-layer table.

A workdir that already holds a finished PTQ run is not redone: its summary is returned. On a
CPU, a run that starts JAX here gets one device per core (`sharding.cpu_device_per_core`).
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import re
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging
from flax import traverse_util

from quantjax import host_memory
from quantjax.intercept import QUANT_STATE, quantized_apply
from quantjax.ptq import calibration, fixedpoint, mxqn, suffix
from quantjax.ptq.evaluator import Evaluator
from quantjax.train import checkpoint, evaluate, experiment, sharding
from quantjax.workdir import Workdir

METHODS = ("fixedpoint", "mxqn")
SPEEDUPS = ("suffix", "stop_early", "dedupe", "lookahead")  # of the fixed-point search, in turn
# Those a search takes by default (`ptq.fast_search`): on a CPU `lookahead` evaluated more
# points than it saved calls (bench/ptq_search_time.py).
DEFAULT_SPEEDUPS = ("suffix", "stop_early", "dedupe")
CRITERIA = ("accuracy", "agreement")
REPORT = "ptq_report"


def check_config(config: ml_collections.ConfigDict) -> None:
  """Raises a one-line ValueError for a bad `ptq` block or a missing `init_from`."""
  ptq = config.get("ptq")
  if ptq is None:
    raise ValueError("mode='ptq' needs a `ptq` block: use configs/ptq_fixedpoint.py or "
                     "configs/ptq_mxqn.py")
  if ptq.method not in METHODS:
    raise ValueError(f"ptq.method={ptq.method!r} is not valid; choose one of {', '.join(METHODS)}")
  if not config.get("init_from"):
    raise ValueError("post-training quantization starts from a float checkpoint: set "
                     "--config.init_from=<workdir of a configs/float.py run>")
  if not os.path.isdir(os.path.join(config.init_from, "checkpoints")):
    raise ValueError(f"init_from={config.init_from!r} holds no checkpoints (expected "
                     f"{os.path.join(config.init_from, 'checkpoints')})")
  for name in ("calibration_batches", "calibration_batch_size"):
    if int(ptq.get(name, 1)) < 1:
      raise ValueError(f"ptq.{name}={ptq.get(name)!r} must be a positive integer")
  if ptq.method == "fixedpoint":
    missing = [k for k in ("threshold", "tradeoff", "start_bits") if k not in ptq]
    if missing:
      raise ValueError(f"ptq.method='fixedpoint' needs ptq.{', ptq.'.join(missing)}: start from "
                       "configs/ptq_fixedpoint.py")
    if ptq.get("criterion", "accuracy") not in CRITERIA:
      raise ValueError(f"ptq.criterion={ptq.criterion!r} is not valid; choose one of "
                       f"{', '.join(CRITERIA)}")
    if not 0.0 < ptq.threshold < 1.0:
      raise ValueError(f"ptq.threshold={ptq.threshold!r} is out of range; valid: (0, 1)")
    if not 0.0 <= ptq.tradeoff < 1.0:
      raise ValueError(f"ptq.tradeoff={ptq.tradeoff!r} is out of range; valid: [0, 1)")
    for k in fixedpoint.COMPONENTS:
      b = ptq.start_bits[k]
      if not isinstance(b, int) or not fixedpoint.MIN_START_BITS <= b <= fixedpoint.MAX_BITS:
        raise ValueError(f"ptq.start_bits.{k}={b!r} is out of range; valid: integers "
                         f"{fixedpoint.MIN_START_BITS} to {fixedpoint.MAX_BITS}")
    b = ptq.get("min_bits", fixedpoint.MIN_BITS)
    if not isinstance(b, int) or isinstance(b, bool) or not (
        fixedpoint.MIN_BITS <= b <= fixedpoint.MAX_BITS):
      raise ValueError(f"ptq.min_bits={b!r} is out of range; valid: integers "
                       f"{fixedpoint.MIN_BITS} to {fixedpoint.MAX_BITS}")
    for name in ("extra_diagonal_step", "fast_search"):
      if not isinstance(ptq.get(name, True), bool):
        raise ValueError(f"ptq.{name}={ptq.get(name)!r} must be True or False")
  else:
    mxqn_config(ptq)


def mxqn_config(ptq) -> mxqn.MxqnConfig:
  fields = {f: ptq[f] for f in mxqn.MxqnConfig.__dataclass_fields__ if f in ptq}
  return mxqn.MxqnConfig(**fields)


def _float_variables(exp: experiment.Experiment, init_from: str, images) -> dict[str, Any]:
  """The model's params and batch_stats from `init_from`, checked against the model."""
  pretrained, step = checkpoint.restore_variables(init_from)
  logging.info("post-training quantization of %s (step %d)", init_from, step)
  shapes = jax.eval_shape(lambda: exp.model.init(
      {"params": jax.random.key(0), "dropout": jax.random.key(1)}, images[:1], train=False))
  out = {}
  for collection, ref in shapes.items():
    flat_ref = traverse_util.flatten_dict(ref, sep="/")
    flat_src = traverse_util.flatten_dict(pretrained.get(collection) or {}, sep="/")
    for key, leaf in flat_ref.items():
      if key not in flat_src or tuple(np.shape(flat_src[key])) != tuple(leaf.shape):
        raise ValueError(f"init_from checkpoint has no {collection} {key} of shape {leaf.shape} "
                         f"(model {exp.config.model!r}); is it a run of this model?")
    out[collection] = traverse_util.unflatten_dict(
        {k: jax.device_put(flat_src[k]) for k in flat_ref}, sep="/")
  return out


def float_predictions(model, variables, images) -> np.ndarray:
  """The float network's predicted classes of `images`."""
  logits = jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, jnp.asarray(images))
  return np.asarray(jnp.argmax(logits, -1)).astype(np.int32)


def _nested(tree, path):
  for key in path.split("/"):
    tree = tree[key]
  return tree


def _result_config(config, rules) -> ml_collections.ConfigDict:
  """The input config with `quant` = the chosen per-layer quantizers."""
  out = ml_collections.ConfigDict(copy.deepcopy(config.to_dict()))
  out.quant = ml_collections.ConfigDict({
      "enabled": True, "layers": ".*", "weight": None, "act": None, "bias": None, "output": None,
      "first_layer": None, "last_layer": None, "rules": rules})
  return out


def search_fixed_point(exp, variables, records, val_images, val_labels, acc_fp, ptq, *,
                       speedups: tuple[str, ...] | None = None, max_tensors: int | None = None,
                       slots: int | None = None, devices: int | None = None):
  """Goyal et al.'s search; returns (rules, report).

  `ptq.criterion='accuracy'` (the paper's) measures each candidate's accuracy on the validation
  labels; 'agreement' measures the fraction of validation images on which it predicts what the
  float network predicts (the float network then scores 1, and every changed prediction counts as
  a loss, so the search cannot spend a lucky gain on the small validation split).

  `speedups` (default: `DEFAULT_SPEEDUPS` if `ptq.fast_search`, else none): 'suffix' evaluates
  each candidate from the layer being searched on (`quantjax.ptq.suffix`), 'stop_early' stops
  counting a candidate once it cannot pass and 'lookahead' counts a step's candidates together
  (both need 'suffix'), 'dedupe' skips a weight or bias point that quantizes the tensor as one
  already evaluated did. The choices are those of the plain search (`bench/ptq_search_time.py`
  times each). `max_tensors` bounds the search (for timing); `slots` and `devices` set the
  suffix evaluator's (`SuffixEvaluator`; default one slot, every local device).
  """
  if speedups is None:
    speedups = DEFAULT_SPEEDUPS if ptq.get("fast_search", True) else ()
  if set(speedups) - set(SPEEDUPS) or (
      {"stop_early", "lookahead"} & set(speedups) and "suffix" not in speedups):
    raise ValueError(f"speedups={speedups!r} is not valid: a subset of {', '.join(SPEEDUPS)} "
                     "('stop_early' and 'lookahead' need 'suffix')")
  layers = exp.layers
  spec = {"name": "fixed_point"}
  search_config = _result_config(exp.config, [
      {"pattern": ".*", "weight": spec, "bias": spec, "output": spec}])
  plan = experiment.build(search_config, training=False).plan
  max_abs = {}
  for layer in layers:
    params = _nested(variables["params"], layer.path)
    max_abs[(layer.path, "weight")] = float(jnp.max(jnp.abs(params["kernel"])))
    if layer.has_bias:
      max_abs[(layer.path, "bias")] = float(jnp.max(jnp.abs(params["bias"])))
    max_abs[(layer.path, "output")] = float(np.max(np.abs(records[layer.path]["output"])))
  # The structure of 'quant_state' under this plan (values are overwritten per candidate).
  calib = records[layers[0].path]["input"][:2]
  # Jitted: one compilation, not one per primitive of an eager pass.
  create = jax.jit(lambda v, x: quantized_apply(exp.model, plan, training=False)(
      v, x, train=False, mutable=[QUANT_STATE])[1])
  created = create(variables, jnp.asarray(calib))
  base = jax.device_get(created[QUANT_STATE])
  criterion = ptq.get("criterion", "accuracy")
  labels = val_labels
  if criterion == "agreement":
    labels = float_predictions(exp.model, variables, val_images)
    acc_fp = 1.0
  batch_size = min(exp.config.eval_batch_size, len(val_images))
  layer_paths = [layer.path for layer in layers]
  if "suffix" in speedups:
    fast = suffix.PointAccuracy.build(exp.model, plan, layer_paths, variables, base,
                                      val_images, labels, batch_size=batch_size,
                                      stop_early="stop_early" in speedups,
                                      **({} if slots is None else {"slots": slots}),
                                      devices=devices)
    accuracy, focus, programs = fast.accuracies, fast.focus, fast.evaluator
  else:
    plain = Evaluator(exp.model, plan, val_images, labels, batch_size=batch_size)
    focus, programs = None, plain

    def accuracy(configurations):
      return [plain({**variables, QUANT_STATE: fixedpoint.quant_state(base, points)})
              for points in configurations]

  result = fixedpoint.search(
      accuracy, max_abs, layer_paths, acc_fp=acc_fp,
      threshold=float(ptq.threshold), tradeoff=float(ptq.tradeoff),
      start_bits={k: int(ptq.start_bits[k]) for k in fixedpoint.COMPONENTS},
      min_bits=int(ptq.get("min_bits", fixedpoint.MIN_BITS)),
      extra_diagonal_step=bool(ptq.get("extra_diagonal_step", True)),
      focus=focus, stop_early="stop_early" in speedups, lookahead="lookahead" in speedups,
      dedupe="dedupe" in speedups, max_tensors=max_tensors)
  macs = [layer.macs for layer in layers]  # per image, for the evaluations' work
  rules = []
  for layer in layers:
    rule = {"pattern": re.escape(layer.path)}
    for component in fixedpoint.COMPONENTS:
      p = result.points.get((layer.path, component))
      rule[component] = (None if p is None else
                         {"name": "fixed_point", "bits": p.bits, "fractional_bits": p.frac})
    rules.append(rule)
  report = {
      "method": "fixedpoint", "criterion": criterion, "score_float": acc_fp,
      "validation_accuracy_search": result.accuracy, "start_bits": result.start_bits,
      "threshold": float(ptq.threshold), "tradeoff": float(ptq.tradeoff),
      "evaluations": result.num_evaluations, "passing_evaluations": result.num_passing,
      "speedups": list(speedups),
      "compilations": programs.num_traces,  # of the candidate program
      "record_compilations": getattr(programs, "num_record_traces", 0),  # cut-moving program
      "program_calls": programs.num_calls,
      "work_macs": programs.work(macs),  # 'counted', 'whole', 'records'
      "network_macs_per_image": sum(macs),
      "search_seconds": result.seconds, "search_cpu_seconds": result.cpu_seconds,
      "history": result.history,
  }
  return rules, report


def _markdown_fixed_point(report) -> str:
  lines = [f"Goyal et al. fixed-point search, criterion: validation {report['criterion']} "
           f"(float {report['score_float']:.4f}, after the search "
           f"{report['validation_accuracy_search']:.4f}); {report['evaluations']} evaluations "
           f"({report['passing_evaluations']} within budget), "
           f"{report['compilations']} compilation(s), {report['search_seconds']:.0f} s.", "",
           f"| component | layer | start | chosen (b, F) | val. {report['criterion']} | drop % "
           "| budget % "
           "| evaluations |", "|---|---|---|---|---|---|---|---|"]
  for r in report["history"]:
    lines.append(f"| {r['component']} | {r['layer']} | {r['start']} | ({r['bits']}, {r['frac']}) "
                 f"| {r['accuracy']:.4f} | {100 * r['drop']:.2f} | {100 * r['budget']:.2f} "
                 f"| {r['evaluations']} |")
  return "\n".join(lines) + "\n"


def _check_same_run(config: ml_collections.ConfigDict, wd: Workdir) -> None:
  """Raises unless `wd`'s finished run was made by this post-training config."""
  recorded = wd.load_config()
  for field in ("mode", "ptq", "init_from", "model", "dataset"):
    old, new = recorded.get(field), config.get(field)
    old = old.to_dict() if hasattr(old, "to_dict") else old
    new = new.to_dict() if hasattr(new, "to_dict") else new
    if json.dumps(old, sort_keys=True, default=str) != json.dumps(new, sort_keys=True,
                                                                  default=str):
      raise ValueError(f"workdir {wd.path!r} holds a run with a different {field} "
                       f"({str(old)[:80]!r}); use a new --workdir")


@host_memory.released_after_compiles()
def run(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Runs `config.ptq.method` on `config.init_from` and writes `workdir` (see module docstring).

  Returns:
    The summary (also `<workdir>/summary.json`).
  """
  # The fixed-point search splits its images over the local devices; on a CPU that needs a
  # device per core (before JAX starts). Nothing else here depends on the device count.
  sharding.cpu_device_per_core()
  check_config(config)
  wd = Workdir(workdir)
  if wd.has_checkpoints():
    summary = wd.read_summary()
    if summary is not None:
      _check_same_run(config, wd)
      logging.info("%s already holds a finished post-training run; not redone", workdir)
      return summary
    raise ValueError(f"workdir {workdir!r} holds checkpoints but no summary.json; use a new "
                     "--workdir")
  lead = jax.process_index() == 0
  if lead:
    wd.create()
  with wd.lock() if lead else contextlib.nullcontext():
    return _quantize(config, wd, lead)


def _quantize(config: ml_collections.ConfigDict, wd: Workdir, lead: bool) -> dict[str, Any]:
  """The body of `run`, holding the workdir's lock."""
  if wd.has_checkpoints():  # made by another process meanwhile
    raise ValueError(f"workdir {wd.path!r} holds checkpoints made meanwhile; use a new --workdir")
  exp = experiment.build(config, quantized=False, training=False)
  ptq = config.ptq
  t0 = time.perf_counter()
  val_images, val_labels = calibration.split_arrays(
      exp.dataset, calibration.CALIBRATION_SPLIT, batch_size=config.eval_batch_size)
  calib_images, _ = calibration.split_arrays(
      exp.dataset, calibration.CALIBRATION_SPLIT, batch_size=int(ptq.calibration_batch_size),
      num_batches=int(ptq.calibration_batches))
  variables = _float_variables(exp, config.init_from, jnp.asarray(calib_images))

  acc_fp = acc_fp_labels = Evaluator(
      exp.model, None, val_images, val_labels,
      batch_size=min(config.eval_batch_size, len(val_images)))(variables)
  records = calibration.record_layers(exp.model, variables, calib_images)
  logging.info("float validation accuracy %.4f; calibrated on %d validation images",
               acc_fp, len(calib_images))

  if ptq.method == "fixedpoint":
    rules, report = search_fixed_point(exp, variables, records, val_images, val_labels, acc_fp,
                                       ptq)
    table = _markdown_fixed_point(report)
  else:
    kernels = {layer.path: _nested(variables["params"], layer.path)["kernel"]
               for layer in exp.layers}
    inputs = {path: r["input"] for path, r in records.items()}
    rules, rows = mxqn.run(exp.layers, kernels, inputs, mxqn_config(ptq))
    report = {"method": "mxqn", "validation_accuracy_float": acc_fp,
              "settings": dict(ptq.to_dict()), "layers": rows}
    table = mxqn.markdown(rows)

  # The result: an ordinary quantized workdir.
  out_config = _result_config(config, rules)
  exp_q = experiment.build(out_config, training=False)
  apply = quantized_apply(exp_q.model, exp_q.plan, training=False)
  # Jitted, as in the training loop: eager quantizer ops each compile and keep an executable.
  calibrate = jax.jit(lambda v, x: apply(v, x, train=False, mutable=["params", QUANT_STATE])[1])
  final = {**variables, **jax.device_get(calibrate(variables, jnp.asarray(calib_images)))}
  mesh = sharding.make_mesh(config.get("num_devices", 0))
  results = {split: evaluate.evaluate_variables(exp_q, final, split, config.eval_batch_size, mesh)
             for split in ("validation", "test")}
  report["validation_accuracy_float"] = acc_fp_labels
  report["validation_accuracy_final"] = results["validation"]["accuracy"]
  report["seconds"] = time.perf_counter() - t0
  summary = evaluate.make_summary(exp_q, results, step=0, variables=final,
                                  ptq={k: v for k, v in report.items()
                                       if k not in ("history", "layers")},
                                  float_checkpoint=os.path.abspath(config.init_from))
  mngr = checkpoint.manager(wd, max_to_keep=1)
  tree = {"step": 0, **{k: final[k] for k in ("params", "batch_stats", QUANT_STATE)
                        if final.get(k)}}
  try:
    checkpoint.save_tree(mngr, wd, 0, tree)
  finally:
    mngr.close()
  if lead:
    wd.record_config(out_config)
    wd.write_json(f"{REPORT}.json", report)
    wd.write_text(f"{REPORT}.md", table)
    wd.write_summary(summary)
  logging.info("%s: test accuracy %.4f (validation %.4f, float validation %.4f); memory "
               "%.1f%% and multiplication cost %.1f%% below all-8-bit; summary in %s",
               ptq.method, results["test"]["accuracy"], results["validation"]["accuracy"],
               acc_fp, 100 * summary["cost"]["reduction_vs_8bit"]["memory_bits"],
               100 * summary["cost"]["reduction_vs_8bit"]["mult_cost"], wd.path)
  return summary
