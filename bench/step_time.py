"""Fake-quant training-step time of every quantizer as a ratio to float, interleaved in one run.

  python bench/step_time.py --model=lenet5 --batch_size=128 --reps=5 --processes=5 \
    --out=results/step_time.md
  python bench/step_time.py --model=resnet20 --batch_size=128 --steps=5 --reps=15 \
    --out=results/step_time_resnet20.md
  (bench/run_all.sh runs it for every model of the registry)

For one model, batch and optimizer, it compiles a train step per quantizer (the 4-bit row of each
method in bench/accuracy_table.py, plus uniform W8A8 with learned (LSQ) and with max scales), then
times them interleaved: every repetition runs each variant for `--steps` steps in turn, so machine
noise hits all of them alike. Each variant's ratio to float is taken within each repetition; the
table gives its median, interquartile range and the median's order-statistic interval
(`bench/intervals.py`), and reads each target from the interval: met, NOT met, or undecided at
this number of repetitions. `--processes=N` runs the whole measurement in N
fresh processes and pools their repetitions: on this CPU a process alone can shift float LeNet-5's
step by 30 % (14 to 19 ms, a quantized step unmoved), an offset no number of repetitions within one
process shows. With the 'bench' extra installed, the same model quantized W8A8 by Qwix's QAT is
timed too, as the peer, beside the plain Flax float step it starts from; every ratio, the peer's
included, is to quantjax's float step. Targets (issue 14): every quantizer at most 1.10x float;
uniform W8A8 with max scales (`uniform/W8A8-max`, Qwix's absmax rule done by quantjax) at most 1.03x
and at or below Qwix's ratio. A variant the backend cannot compile is reported as failed (e.g.
Qwix's int8 convolutions on XLA GPU).

What a quantized step cost on VGG-small (found by reading Qwix's QAT and timing convolutions):
Qwix forms each forward convolution on int8 operands with an int32 sum, and on this CPU an int8
convolution with at least 32 input channels runs 2-8x faster than the float32 one
(bench/int8_products.py; VGG-small's 64-channel block: 0.25x); the backward convolutions stay
float32. quantjax did the float32 convolution of the fake-quantized values plus the quantizers'
elementwise passes. Since `quant.integer_products` ('auto': on a CPU, from 32 input channels on)
its layers do as Qwix does wherever both operands sit on <=8-bit integer grids
(`quantjax.intercept.integer`); `--integer_products=off` times the float products instead.
"""

from __future__ import annotations

import datetime
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import accuracy_table  # bench/ is the script's directory, so its siblings import directly
import intervals
import jax
import jax.numpy as jnp
import optax
from absl import app, flags

from quantjax import intercept, models
from quantjax.reports.machine import machine
from quantjax.train import optimizer, steps
from quantjax.train.state import TrainState
from quantjax.workdir import write_text_atomic

_MODEL = flags.DEFINE_string("model", "lenet5", "Model name (quantjax.models).")
_BATCH = flags.DEFINE_integer("batch_size", 128, "Global batch size.")
_STEPS = flags.DEFINE_integer("steps", 20, "Steps per timed repetition.")
_REPS = flags.DEFINE_integer("reps", 7, "Interleaved repetitions.")
_OUT = flags.DEFINE_string("out", "", "Markdown output (optional).")
_PEER = flags.DEFINE_enum(
    "peer", "auto", ["auto", "qwix", "none"],
    "Also time the same model quantized W8A8 by Qwix's QAT (QtProvider), the peer library: "
    "'auto' when the 'bench' extra is installed (pip install -e '.[bench]').")

_INTEGER = flags.DEFINE_enum(
    "integer_products", "auto", ["auto", "on", "off"],
    "The plans' quant.integer_products: 'off' times the float products of fake-quantized values.")
_PROCESSES = flags.DEFINE_integer(
    "processes", 1, "Run the whole measurement in this many fresh processes, one after another, "
    "and pool their repetitions (a process's own offset then shows in the spread).")
_CHILD_JSON = flags.DEFINE_string("child_json", "", "Internal: where a child process of "
                                  "--processes writes its times.")
_OLDER = flags.DEFINE_bool(
    "older_emitters", False, "Also time every quantjax variant compiled with XLA's older CPU "
    "emitters (compiler option xla_cpu_use_fusion_emitters=False), as rows '<variant>, older "
    "emitters', against the same float step (compiled as XLA compiles by default). "
    "bench/memory.py shows what they save in compilation memory; this shows what they cost.")
OLDER_EMITTERS = {"xla_cpu_use_fusion_emitters": False}
OLDER_SUFFIX = ", older emitters"
_ROWS = flags.DEFINE_list("rows", [], "Rows to time besides float (default: ROWS), e.g. "
                          "uniform/W8A8,uniform/W4A4.")

PEER = "qwix/W8A8 (peer)"
PEER_FLOAT = "float, plain Flax (peer's float)"
QUANTIZER_LIMIT = 1.10  # every quantizer's step against float (issue 14)
W8A8_LIMIT = 1.03  # uniform W8A8's, which must also be at or below Qwix's ratio

EIGHT_BIT = dict(name="uniform", bits=8, granularity="channel", scale_method="lsq")
# Uniform W8A8 with max scales (weights per channel, activations a moving average of the
# batch's max), as Qwix's absmax rule does it: the like-for-like row for the peer and the W8A8
# target. The table's uniform/W8A8 learns its steps (LSQ), which Qwix does not.
MAX_W8A8 = "uniform/W8A8-max"
ROWS = (MAX_W8A8, "uniform/W8A8", "uniform/W4A4", "pact/W4A4", "pot/W4A4", "log/W4A4",
        "esb/W4A4-k2", "nuuq/N4", "liss/W4A4")


def variants(layers) -> dict[str, intercept.QuantPlan]:
  rows = {row.name: (row.weight, row.act, EIGHT_BIT) for row in accuracy_table.sweep()}
  max_w8 = dict(name="uniform", bits=8, granularity="channel", scale_method="max")
  rows[MAX_W8A8] = (max_w8, dict(name="uniform", bits=8, signed=False, scale_method="max"),
                    max_w8)
  plans = {"float": intercept.QuantPlan()}
  for name in ROWS:
    if name in (_ROWS.value or ROWS):
      weight, act, edge = rows[name]  # edge: the first and last layers' 8-bit weights
      plans[name] = intercept.resolve(
          layers, weight=weight, act=act, first_layer={"weight": edge, "act": None},
          last_layer={"weight": edge}, integer_products=_INTEGER.value)
  return plans


def qwix_model(model):
  """`model` with Qwix's quantized training: int8 weights and activations on every Conv/Dense.

  Qwix (github.com/google/qwix) QtProvider with one rule: absmax int8 weights (per channel) and
  dynamic absmax int8 activations, fake-quantized in the forward pass with straight-through
  gradients. quantjax's uniform/W8A8-max row is the like-for-like comparison.
  """
  import qwix  # the 'bench' extra: never a runtime dependency

  rule = qwix.QtRule(module_path=".*", weight_qtype="int8", act_qtype="int8")
  return qwix.quantize_model(model, qwix.QtProvider([rule]))


def want_peer() -> bool:
  if _PEER.value == "none":
    return False
  try:
    import qwix  # noqa: F401
  except ImportError:
    if _PEER.value == "qwix":
      raise ValueError("--peer=qwix needs the 'bench' extra: pip install -e '.[bench]'") from None
    return False
  return True


def build(model, plan, images, labels, conv_kernel_grad="auto", compiler_options=None):
  variables = intercept.quantized_init(model, plan)({"params": jax.random.key(0)}, images,
                                                    train=False)
  # The optimizer as training builds it: the quantizers' parameters updated as one vector.
  tx = optimizer.partitioned(optax.adam(1e-3), intercept.quantizer_params(
      model, variables["params"], images, train=False))
  state = TrainState.create(apply_fn=model.apply, params=variables["params"],
                            tx=tx, batch_stats=variables.get("batch_stats", {}),
                            quant_state=variables.get(intercept.QUANT_STATE, {}))
  step = jax.jit(steps.make_train_step(model, plan, 10, seed=0, aux_loss_weight=1.0,
                                       conv_kernel_grad=conv_kernel_grad),
                 donate_argnames=("state",), compiler_options=compiler_options)
  batch = {"image": images, "label": labels}
  for _ in range(3):  # compile and warm up
    state, metrics = step(state, batch)
  jax.block_until_ready(metrics)
  return step, state, batch


def measure() -> tuple[dict[str, list[float]], dict[str, str]]:
  """Seconds per step of every variant, per repetition (interleaved), and the variants that
  failed to build on this backend (their first error line)."""
  shape = (28, 28, 1) if _MODEL.value in ("lenet5", "sequential") else (32, 32, 3)
  model = models.get_model(_MODEL.value, num_classes=10)
  images = jax.random.normal(jax.random.key(1), (_BATCH.value, *shape))
  labels = jax.random.randint(jax.random.key(2), (_BATCH.value,), 0, 10)
  layers = intercept.discover_layers(model, images[:2], train=False)
  plans = variants(layers)
  builders = {name: (lambda plan=plan: build(model, plan, images, labels))
              for name, plan in plans.items()}
  if _OLDER.value:
    builders.update({f"{name}{OLDER_SUFFIX}": (
        lambda plan=plan: build(model, plan, images, labels, compiler_options=OLDER_EMITTERS))
        for name, plan in plans.items()})
  if want_peer():
    # The float step a Qwix user starts from: the plain Flax model (no quantjax interceptor,
    # jax.lax's convolution and XLA's kernel gradient). Qwix's QAT convolution has its own VJP.
    builders[PEER_FLOAT] = lambda: build(model, None, images, labels, conv_kernel_grad="xla")
    builders[PEER] = lambda: build(qwix_model(model), None, images, labels)
  runs, failed = {}, {}
  for name, make in builders.items():
    try:  # build, compile and run one step: a variant this backend cannot run is reported
      runs[name] = list(make())
    except Exception as e:  # noqa: BLE001  e.g. XLA GPU cannot lower Qwix's int8 convolution
      failed[name] = next((line for line in str(e).splitlines() if line.strip()),
                          type(e).__name__)[:160]
  times: dict[str, list[float]] = {name: [] for name in runs}
  for _ in range(_REPS.value):
    for name, run in runs.items():
      step, state, batch = run
      start = time.perf_counter()
      for _ in range(_STEPS.value):
        state, metrics = step(state, batch)
      jax.block_until_ready(metrics)
      times[name].append((time.perf_counter() - start) / _STEPS.value)
      run[1] = state
  return times, failed


def measure_in_processes(n: int) -> tuple[dict[str, list[float]], dict[str, str]]:
  """`measure()` in `n` fresh processes one after another, their repetitions pooled.

  A process's compiled programs and buffers sit where they sit for its whole life, and on this
  CPU that alone moved float LeNet-5's step between 14 and 19 ms from one process to the next
  while a quantized step stayed at 15 ms: ratios from one process carry that offset, which its
  repetitions cannot show.
  """
  times: dict[str, list[float]] = {}
  failed: dict[str, str] = {}
  argv = [a for a in sys.argv[1:] if not a.startswith(("--processes", "--out", "--child_json"))]
  with tempfile.TemporaryDirectory() as tmp:
    for i in range(n):
      path = os.path.join(tmp, f"{i}.json")
      subprocess.run([sys.executable, os.path.abspath(__file__), *argv, "--processes=1",
                      f"--child_json={path}"], check=True)
      with open(path) as f:
        child = json.load(f)
      for name, ts in child["times"].items():
        times.setdefault(name, []).extend(ts)
      failed.update(child["failed"])
  return times, failed


def main(argv):
  del argv
  unknown = sorted(set(_ROWS.value) - set(ROWS))
  if unknown:
    raise app.UsageError(f"--rows: unknown {', '.join(unknown)}; valid: {', '.join(ROWS)}")
  if _PROCESSES.value < 1:
    raise app.UsageError(f"--processes={_PROCESSES.value}: must be at least 1")
  if _PROCESSES.value > 1:
    times, failed = measure_in_processes(_PROCESSES.value)
  else:
    times, failed = measure()
  if _CHILD_JSON.value:
    with open(_CHILD_JSON.value, "w") as f:
      json.dump({"times": times, "failed": failed}, f)
    return
  # Ratios taken within each repetition (the variants ran back to back), then their median and
  # interquartile range: the spread of the ratio, not of the machine's speed.
  # Every row against quantjax's float step: one reference, so the peer's ratio compares its
  # step with ours directly. (Against its own float, the plain Flax model, in the verdict.)
  ratios = {name: [t / f for t, f in zip(ts, times["float"], strict=True)]
            for name, ts in times.items()}

  def spread(xs: list[float]) -> tuple[float, float]:
    if len(xs) < 4:
      return min(xs), max(xs)
    q1, _, q3 = statistics.quantiles(xs, n=4, method="inclusive")
    return q1, q3

  processes = _PROCESSES.value
  reps = (f"{processes} processes x {_REPS.value} interleaved repetitions" if processes > 1
          else f"{_REPS.value} interleaved repetitions")
  peer_note = "" if PEER_FLOAT not in times else (
      f" Every ratio, the peer's included, is to quantjax's float step, whose convolutions "
      "take `conv_kernel_grad='auto'` (the kernel gradient tap by tap where it pays, "
      f"`quantjax.intercept.conv`). `{PEER_FLOAT}` is the same model applied by Flax alone "
      "(jax.lax's convolution, XLA's kernel gradient): the float step a Qwix user starts from.")
  lines = [
      f"# Training-step time against float ({_MODEL.value}, batch {_BATCH.value})",
      "",
      f"Generated by `python bench/step_time.py --model={_MODEL.value} "
      f"--batch_size={_BATCH.value} --steps={_STEPS.value} --reps={_REPS.value}"
      f"{'' if processes == 1 else f' --processes={processes}'}"
      f"{'' if _INTEGER.value == 'auto' else ' --integer_products=' + _INTEGER.value}"
      f"{'' if _PEER.value == 'auto' else ' --peer=' + _PEER.value}"
      f"{' --rows=' + ','.join(_ROWS.value) if _ROWS.value else ''}"
      f"{' --older_emitters' if _OLDER.value else ''}` on "
      f"{datetime.date.today().isoformat()}, {machine()}; {reps} of {_STEPS.value} steps; "
      "the ratio to float is taken within each repetition; its median, its interquartile "
      "range (IQR; min-max below 4 repetitions: how much one repetition moves) and the "
      "order-statistic interval of the median (`bench/intervals.py`, with its coverage: how "
      "precisely the median is known) are shown. A target is met or missed only when the whole "
      "interval says so, else it is undecided at this number of repetitions. "
      f"Integer products: {_INTEGER.value} (`quant.integer_products`; 'auto' forms the layers "
      "whose operands sit on <=8-bit integer grids on int8 integers on a CPU)." + peer_note,
      "",
      f"| variant | ms / step (median) | ratio to float | IQR of the ratio | interval of the "
      f"median | within {QUANTIZER_LIMIT:.2f}x |",
      "|---|---|---|---|---|---|",
  ]
  for name, ts in times.items():
    ratio = statistics.median(ratios[name])
    lo, hi = spread(ratios[name])
    m_lo, m_hi, coverage = intervals.median_interval(ratios[name])
    # The older emitters' rows show what those emitters cost, not a step the target is about.
    ok = "" if name in ("float", PEER_FLOAT, PEER) or name.endswith(OLDER_SUFFIX) else (
        intervals.verdict(m_lo, m_hi, at_most=QUANTIZER_LIMIT))
    lines.append(f"| {name} | {1e3 * statistics.median(ts):.2f} | {ratio:.3f} | "
                 f"{lo:.3f}-{hi:.3f} | {m_lo:.3f}-{m_hi:.3f} ({100 * coverage:.1f} %) | {ok} |")
  for name, error in failed.items():
    lines.append(f"| {name} | failed on this backend: {error} | | | | |")
  if PEER in times and MAX_W8A8 in times:
    ours, theirs = (statistics.median(ratios[n]) for n in (MAX_W8A8, PEER))
    lo, hi, coverage = intervals.median_interval(ratios[MAX_W8A8])
    # Against the peer: the difference of the two ratios, paired within each repetition.
    d_lo, d_hi, d_coverage = intervals.median_interval(
        [a - b for a, b in zip(ratios[MAX_W8A8], ratios[PEER], strict=True)])
    limit, below_peer = (intervals.verdict(lo, hi, at_most=W8A8_LIMIT),
                         intervals.verdict(d_lo, d_hi, at_most=0.0))
    met = ("met" if limit == below_peer == "met" else
           "NOT met" if "NOT met" in (limit, below_peer) else "undecided")
    own = statistics.median(t / f for t, f in zip(times[PEER], times[PEER_FLOAT], strict=True))
    lines += ["", f"{MAX_W8A8}: {ours:.3f}x float (interval of the median {lo:.3f}-{hi:.3f}, "
              f"{100 * coverage:.1f} %; at most {W8A8_LIMIT:.2f}x: {limit}); {PEER}: "
              f"{theirs:.3f}x the same float (ours minus the peer's, paired per repetition: "
              f"{d_lo:+.3f} to {d_hi:+.3f}, {100 * d_coverage:.1f} %; at or below the peer: "
              f"{below_peer}). Target (both): **{met}**. Qwix against its own float, the plain "
              f"Flax model's step: {own:.3f}x."]
  text = "\n".join(lines) + "\n"
  print(text)
  if _OUT.value:
    os.makedirs(os.path.dirname(_OUT.value) or ".", exist_ok=True)
    write_text_atomic(_OUT.value, text)


if __name__ == "__main__":
  jnp.zeros(())  # initialise the backend before timing anything
  app.run(main)
