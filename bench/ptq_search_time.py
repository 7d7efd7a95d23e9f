"""Wall time of Goyal et al.'s fixed-point search on the Sequential net (issue 14, target 5).

  nice python bench/ptq_search_time.py          # -> results/ptq_search_time.md (+ .json)

Target: <= 3 minutes for the Sequential net on Fashion-MNIST's 6,000 validation images, one
compilation, and the choices of the search without the speed-ups. The float network is the
Sequential run in `--init_from`; if that holds no checkpoint, a brief one is trained first
(`--train_epochs` of `configs/fashion/lenet5.py:float --config.model=sequential`).

Rows, each a search from the same float network and calibration (`quantjax.ptq.run.
search_fixed_point`, timed whole: the float margins, the compilations and the search), with the
speed-ups of `quantjax.ptq.suffix` added in turn:

- `plain`: every candidate evaluated on the whole network. It takes over an hour on 2 cores, so
  it runs only the first `--plain_tensors` tensors; its full time is estimated as its seconds
  per evaluation times the evaluations of the full search (the `suffix` row evaluates exactly
  the same points, one by one);
- `+suffix`: only the network after the cut, from the cached tensor, every image counted;
- `+stop_early`: a candidate stops counting once it cannot pass its budget;
- `+dedupe`: a weight or bias point that quantizes its tensor exactly as one already evaluated
  did is not evaluated again. These three are the search's default (`DEFAULT_SPEEDUPS`), and
  the target is read from this row;
- `+lookahead`: a step's candidates counted together (lanes in one call);
- `8 slots`: the previous row with the suffix evaluator's former default of 8 slots (lanes
  `vmap`ped side by side, `rows / 8` images each) instead of one;
- `devices`: the search's default (`+dedupe`'s speed-ups, one slot) with each batch's images
  split over every local device (on a CPU one device per core, which this script sets up as
  the PTQ pipeline does). Every other row runs on one device.

Each row's choices (b, F per tensor) are compared with the plain search's (on the tensors it
searched) and with the previous row's (all 45). Wall time on a shared machine moves with its
load: the CPU seconds of this process and the load average are recorded beside it.

Against the limit: the float network's own forward pass over the validation images is timed in
the same run, `--rate_reps` passes before the rows and as many after them (on every local device,
in batches of the search's rows), which gives this machine's rate in multiply-adds per second.
Each row's work is the multiply-adds of its evaluations (`SuffixEvaluator.work`: every image
counted, from its cut on, plus moving the cut), so a row's time is set beside the time the float
network takes for the same work at its median rate. The candidates the search cannot stop early
(within their budget and, in the neighbourhood, not below the current point) are counted on
every image: at the fastest pass's rate that work alone gives a floor no arrangement of the same
evaluations goes below without a faster convolution than the float network's.
"""

from __future__ import annotations

import datetime
import json
import os
import shlex
import subprocess
import sys
import time

import intervals  # bench/ is the script's directory, so its siblings import directly
import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from configs.fashion import lenet5 as fashion  # noqa: E402
from quantjax.ptq import calibration  # noqa: E402
from quantjax.ptq.evaluator import Evaluator  # noqa: E402
from quantjax.ptq.run import DEFAULT_SPEEDUPS, SPEEDUPS, search_fixed_point  # noqa: E402
from quantjax.reports.machine import machine  # noqa: E402
from quantjax.train import checkpoint, experiment, sharding  # noqa: E402
from quantjax.workdir import write_text_atomic  # noqa: E402

_INIT_FROM = flags.DEFINE_string("init_from", "runs/ptq/float_sequential_fashion",
                                 "Workdir of a float Sequential run on Fashion-MNIST (trained "
                                 "here if it holds no checkpoint).")
_TRAIN_EPOCHS = flags.DEFINE_float("train_epochs", 2.0, "Epochs of that brief float run.")
_PLAIN_TENSORS = flags.DEFINE_integer("plain_tensors", 3,
                                      "Tensors the plain search runs (0: all 45, over an hour).")
_ROWS = flags.DEFINE_list("rows", ["plain", *SPEEDUPS, "slots8", "devices"],
                          "Rows to run, in this order (each adds its speed-up to the last; "
                          "'slots8': the last with 8 slots; 'devices': the last over every "
                          "local device).")
_OUT_DIR = flags.DEFINE_string("out_dir", "results", "Where <name>.md/.json go.")
_RATE_REPS = flags.DEFINE_integer("rate_reps", 7, "Timed passes of the float network over the "
                                  "validation images (its rate, against the limit).")
_NAME = flags.DEFINE_string("name", "ptq_search_time", "Base name of the .md/.json written "
                            "(another machine's table beside this one: e.g. a suffix).")


def float_run(init_from: str) -> None:
  """Trains the brief float Sequential run unless `init_from` holds a checkpoint."""
  if os.path.isdir(os.path.join(init_from, "checkpoints")) and os.listdir(
      os.path.join(init_from, "checkpoints")):
    return
  cmd = [sys.executable, "train.py", "--config=configs/fashion/lenet5.py:float",
         "--config.model=sequential", f"--config.num_epochs={_TRAIN_EPOCHS.value}",
         "--config.warmup_epochs=0.25", "--config.eval_every_epochs=0",
         "--config.tensorboard=False", f"--workdir={init_from}"]
  print("training the float network: " + shlex.join(cmd[1:]), flush=True)
  subprocess.run(cmd, check=True, cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def float_rate(model, variables, images: np.ndarray, macs_per_image: int, *, rows: int,
               reps: int) -> list[float]:
  """Multiply-adds per second of the float network's forward pass over `images`, in batches of
  `rows` split over every local device, once per repetition (after one untimed pass)."""
  mesh = Mesh(np.asarray(jax.local_devices()), ("images",))
  split = NamedSharding(mesh, P("images"))
  usable = len(images) // rows * rows
  batches = [jax.device_put(images[i:i + rows], split) for i in range(0, usable, rows)]
  forward = jax.jit(lambda v, x: model.apply(v, x, train=False))
  jax.block_until_ready([forward(variables, x) for x in batches])
  rates = []
  for _ in range(reps):
    t0 = time.perf_counter()
    jax.block_until_ready([forward(variables, x) for x in batches])
    rates.append(usable * macs_per_image / (time.perf_counter() - t0))
  return rates


def main(argv):
  del argv
  unknown = set(_ROWS.value) - {"plain", "slots8", "devices", *SPEEDUPS}
  if unknown:
    raise app.UsageError(f"--rows {sorted(unknown)} not valid; choose plain, "
                         f"{', '.join(SPEEDUPS)}, slots8, devices")
  sharding.cpu_device_per_core()  # before JAX starts: the 'devices' row's CPU devices
  float_run(_INIT_FROM.value)
  config = fashion.get_config("ptq_fixedpoint")
  config.model = "sequential"
  config.init_from = _INIT_FROM.value
  exp = experiment.build(config, quantized=False, training=False)
  images, labels = calibration.split_arrays(exp.dataset, calibration.CALIBRATION_SPLIT,
                                            batch_size=config.eval_batch_size)
  calib, _ = calibration.split_arrays(
      exp.dataset, calibration.CALIBRATION_SPLIT, batch_size=int(config.ptq.calibration_batch_size),
      num_batches=int(config.ptq.calibration_batches))
  raw, step = checkpoint.restore_variables(config.init_from)
  variables = {k: jax.tree_util.tree_map(jnp.asarray, raw[k]) for k in ("params", "batch_stats")
               if raw.get(k)}
  acc_fp = Evaluator(exp.model, None, images, labels, batch_size=config.eval_batch_size)(
      variables)
  records = calibration.record_layers(exp.model, variables, calib)
  per_image = sum(layer.macs for layer in exp.layers)
  rows_per_call = 256  # SuffixEvaluator's default rows, split over the devices

  def time_float(when: str) -> list[float]:
    out = float_rate(exp.model, variables, images, per_image, rows=rows_per_call,
                     reps=_RATE_REPS.value)
    print(f"float forward ({when}): " + ", ".join(f"{r / 1e9:.1f}" for r in out)
          + f" G multiply-adds/s on {jax.local_device_count()} device(s)", flush=True)
    return out

  rates = time_float("before the rows")
  command = shlex.join(["python", "bench/ptq_search_time.py", *sys.argv[1:]])
  date, where = datetime.date.today().isoformat(), machine()
  load = os.getloadavg()
  print(f"# {len(images)} validation images, float accuracy {acc_fp:.4f} ({config.init_from}, "
        f"step {step}); {where}; load average {load[0]:.1f}", flush=True)

  rows, speedups = [], ()
  for name in _ROWS.value:
    slots = 8 if name == "slots8" else 1
    devices = jax.local_device_count() if name == "devices" else 1
    if name not in ("plain", "slots8", "devices"):
      speedups = (*speedups, name)
    if name == "devices":
      speedups = DEFAULT_SPEEDUPS
    bounded = name == "plain" and _PLAIN_TENSORS.value > 0
    load_before = os.getloadavg()[0]
    t0, cpu0 = time.perf_counter(), time.process_time()
    rules, report = search_fixed_point(
        exp, variables, records, images, labels, acc_fp, config.ptq, speedups=speedups,
        max_tensors=_PLAIN_TENSORS.value if bounded else None, slots=slots, devices=devices)
    label = {"plain": "plain", "slots8": "8 slots", "devices": f"{devices} devices"}.get(
        name, "+" + name)
    row = {"row": label, "speedups": list(speedups), "slots": slots, "devices": devices,
           "wall_seconds": time.perf_counter() - t0, "cpu_seconds": time.process_time() - cpu0,
           "load_average": (load_before + os.getloadavg()[0]) / 2,
           "tensors": len(report["history"]), "evaluations": report["evaluations"],
           "passing": report["passing_evaluations"],
           "program_calls": report["program_calls"], "compilations": report["compilations"],
           "record_compilations": report["record_compilations"],
           "choices": [(r["component"], r["layer"], r["bits"], r["frac"])
                       for r in report["history"]],
           "accuracies": [r["accuracy"] for r in report["history"]],
           "validation_accuracy": report["validation_accuracy_search"], "bounded": bounded,
           "work_macs": report["work_macs"],
           "history": [{k: r[k] for k in ("component", "layer", "bits", "frac", "evaluations",
                                          "passing", "seconds")} for r in report["history"]]}
    work = report["work_macs"]
    row["work_evaluations"] = (work["counted"] + work["records"]) / (len(images) * per_image)
    rows.append(row)
    print(f"{row['row']}: {row['wall_seconds']:.0f} s wall, {row['cpu_seconds']:.0f} s CPU, "
          f"{row['tensors']} tensors, {row['evaluations']} evaluations, load "
          f"{row['load_average']:.1f}", flush=True)

  rates += time_float("after the rows")
  rate, fastest = float(np.median(rates)), max(rates)
  rate_lo, rate_hi, rate_coverage = intervals.median_interval(rates)
  full_seconds = len(images) * per_image / rate  # one whole-network evaluation at that rate
  for r in rows:
    work = r["work_macs"]
    r["work_rate_ratio"] = (work["counted"] + work["records"]) / r["wall_seconds"] / rate
    r["floor_seconds"] = work["whole"] / fastest

  # The plain row's full time: its seconds per evaluation times the full search's evaluations
  # (the '+suffix' row evaluates the same points one by one).
  full = next((r for r in rows if r["speedups"] == ["suffix"]), None)
  for r in rows:
    r["estimated_full_seconds"] = r["wall_seconds"]
    if r["bounded"] and full is not None:
      r["estimated_full_seconds"] = r["wall_seconds"] / r["evaluations"] * full["evaluations"]
  plain = rows[0] if rows[0]["row"] == "plain" else None
  for prev, r in zip([None, *rows], rows, strict=False):
    n = len(r["choices"]) if plain is None else min(len(r["choices"]), len(plain["choices"]))
    r["same_choices_as_plain"] = None if plain is None or r is plain else (
        r["choices"][:n] == plain["choices"][:n] and r["accuracies"][:n] == plain["accuracies"][:n])
    r["same_choices_as_previous"] = None if prev is None or prev["bounded"] else (
        r["choices"] == prev["choices"] and r["accuracies"] == prev["accuracies"])
    r["ratio_to_plain"] = None if plain is None else (
        plain["estimated_full_seconds"] / r["estimated_full_seconds"])
    r["ratio_to_previous"] = None if prev is None else (
        prev["estimated_full_seconds"] / r["estimated_full_seconds"])

  def fmt(x, spec):
    return "-" if x is None else (("yes" if x else "NO") if isinstance(x, bool) else
                                  format(x, spec))

  lines = [
      "# Fixed-point search time: the Sequential net on Fashion-MNIST (issue 14, target 5)", "",
      f"Generated {date} on {where} by `{command}` (the machine's load "
      f"average {load[0]:.1f} at the start, per row below). {len(images)} validation images, "
      f"float validation accuracy {acc_fp:.4f} (`{config.init_from}`, step {step}). Target: "
      "<= 180 s wall, one compilation, the plain search's choices.", "",
      f"The float network's forward pass ran at {rate / 1e9:.1f} G multiply-adds/s "
      f"[{rate_lo / 1e9:.1f}, {rate_hi / 1e9:.1f}] (median [its interval, "
      f"{100 * rate_coverage:.1f} %] of {len(rates)} passes over the {len(images)} images, half "
      f"before the rows and half after, on {jax.local_device_count()} device(s), batches of "
      f"{rows_per_call}), {fastest / 1e9:.1f} at the fastest pass: one whole-network "
      f"evaluation takes {full_seconds:.2f} s at the median rate ({per_image / 1e6:.1f} M "
      "multiply-adds per image).", "",
      "| row | wall s | CPU s | load | evaluations (passing) | calls | compilations | x plain | "
      "x previous | same choices as plain / previous | work (evaluations) | x float rate | "
      "floor s |",
      "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
  for r in rows:
    wall = (f"{r['wall_seconds']:.0f} ({r['tensors']} tensors; full ~"
            f"{r['estimated_full_seconds']:.0f})" if r["bounded"] else f"{r['wall_seconds']:.0f}")
    compiled = (f"{r['compilations']}" if r["row"] == "plain" else
                f"{r['compilations']} + {r['record_compilations']}")
    lines.append(
        f"| {r['row']} | {wall} | {r['cpu_seconds']:.0f} | {r['load_average']:.1f} | "
        f"{r['evaluations']} ({r['passing']}) | {r['program_calls']} | {compiled} | "
        f"{fmt(r['ratio_to_plain'], '.1f')} | {fmt(r['ratio_to_previous'], '.2f')} | "
        f"{fmt(r['same_choices_as_plain'], '')} / {fmt(r['same_choices_as_previous'], '')} | "
        f"{r['work_evaluations']:.1f} | {r['work_rate_ratio']:.2f} | {r['floor_seconds']:.0f} |")
  lines += [
      "", "Columns: `passing` are the candidates within their budget, each counted on at least "
      "the images its budget needs (with early stopping, every image); `calls` are calls of the "
      "candidate program (the plain search: of the whole "
      "network); `compilations` are the candidate program's, plus the cut-moving program's. "
      "Ratios compare (estimated) full wall times. Every row but `8 slots` counts one lane at a "
      "time (1 slot); every row but `devices` runs on one device. `work` is the row's "
      "multiply-adds (images counted from their cut on, plus moving the cut) in whole-network "
      "evaluations of the validation images; `x float rate` is the rate it did them at over the "
      "float network's median rate; `floor` is the time the candidates counted on every image "
      "take alone at the float network's fastest pass (a bounded row: of the tensors it "
      "searched).", ""]
  default = next((r for r in rows[::-1] if r["speedups"] == list(DEFAULT_SPEEDUPS)
                  and r["slots"] == 1), None)
  if default is not None:
    lines.append(
        f"- The search's default ({default['row']}): {default['wall_seconds']:.0f} s wall against "
        f"the 180 s target: {'met' if default['wall_seconds'] <= 180 else 'NOT met'} at load "
        f"{default['load_average']:.1f} on 2 cores; {default['compilations']} compilation(s) of "
        "the candidate program.")
    floor = default["floor_seconds"]
    lines.append(
        "- Against the limit: the candidates it could not stop early (within their budget and, "
        "in the neighbourhood, not below the current point; "
        f"{default['passing']} of {default['evaluations']} passed) are counted on every image, "
        f"and that work alone takes {floor:.0f} s at the float network's fastest pass here, "
        f"{floor / 180:.2f}x the target"
        + (": no arrangement of these evaluations meets it on this machine without a faster "
           "convolution than the float network's." if floor > 180 else ".")
        + f" The whole search did {default['work_evaluations']:.1f} evaluations' work at "
        f"{default['work_rate_ratio']:.2f}x the float network's rate.")
  text = "\n".join(lines) + "\n"
  print(text)
  os.makedirs(_OUT_DIR.value, exist_ok=True)
  write_text_atomic(os.path.join(_OUT_DIR.value, f"{_NAME.value}.md"), text)
  write_text_atomic(os.path.join(_OUT_DIR.value, f"{_NAME.value}.json"), json.dumps(
      {"date": date, "machine": where, "command": command, "images": len(images),
       "float_accuracy": acc_fp, "load_average_start": load[0],
       "float_rate_macs_per_second": rates, "network_macs_per_image": per_image,
       "rows": rows}, indent=1))


if __name__ == "__main__":
  app.run(main)
