"""Fake-quant training-step time of every quantizer as a ratio to float, measured in one process.

  python bench/step_time.py --model=lenet5 --batch_size=128 --out=results/step_time.md
  python bench/step_time.py --model=resnet20 --batch_size=128 --steps=5 --reps=5 \
    --out=results/step_time_resnet20.md

For one model, batch and optimizer, it compiles a train step per quantizer (the 4-bit row of each
method in bench/accuracy_table.py, plus uniform W8A8), then times them interleaved: every
repetition runs each variant for `--steps` steps in turn, so machine noise hits all of them alike.
The reported time is the median over repetitions; the ratio is against float in the same run.
With the 'bench' extra installed, the same model quantized W8A8 by Qwix's QAT is timed too, as
the peer. Targets: every quantizer within 1.3x of float; uniform W8A8 within 1.10x and faster
than Qwix.
"""

from __future__ import annotations

import datetime
import os
import statistics
import time

import accuracy_table  # bench/ is the script's directory, so its sibling imports directly
import jax
import jax.numpy as jnp
import optax
from absl import app, flags

from quantjax import intercept, models
from quantjax.reports.machine import machine
from quantjax.train import steps
from quantjax.train.state import TrainState

_MODEL = flags.DEFINE_string("model", "lenet5", "Model name (quantjax.models).")
_BATCH = flags.DEFINE_integer("batch_size", 128, "Global batch size.")
_STEPS = flags.DEFINE_integer("steps", 20, "Steps per timed repetition.")
_REPS = flags.DEFINE_integer("reps", 7, "Interleaved repetitions.")
_OUT = flags.DEFINE_string("out", "", "Markdown output (optional).")
_PEER = flags.DEFINE_enum(
    "peer", "auto", ["auto", "qwix", "none"],
    "Also time the same model quantized W8A8 by Qwix's QAT (QtProvider), the peer library: "
    "'auto' when the 'bench' extra is installed (pip install -e '.[bench]').")

_ROWS = flags.DEFINE_list("rows", [], "Rows to time besides float (default: ROWS), e.g. "
                          "uniform/W8A8,uniform/W4A4.")

EIGHT_BIT = dict(name="uniform", bits=8, granularity="channel", scale_method="lsq")
ROWS = ("uniform/W8A8", "uniform/W4A4", "pact/W4A4", "pot/W4A4", "log/W4A4", "esb/W4A4-k2",
        "nuuq/N4", "liss/W4A4")


def variants(layers) -> dict[str, intercept.QuantPlan]:
  plans = {"float": intercept.QuantPlan()}
  for row in accuracy_table.sweep():
    if row.name in (_ROWS.value or ROWS):
      plans[row.name] = intercept.resolve(
          layers, weight=row.weight, act=row.act,
          first_layer={"weight": EIGHT_BIT, "act": None}, last_layer={"weight": EIGHT_BIT})
  return plans


def qwix_model(model):
  """`model` with Qwix's quantized training: int8 weights and activations on every Conv/Dense.

  Qwix (github.com/google/qwix) QtProvider with one rule: absmax int8 weights (per channel) and
  dynamic absmax int8 activations, fake-quantized in the forward pass with straight-through
  gradients. quantjax's uniform/W8A8 row is the like-for-like comparison.
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


def build(model, plan, images, labels):
  variables = intercept.quantized_init(model, plan)({"params": jax.random.key(0)}, images,
                                                    train=False)
  state = TrainState.create(apply_fn=model.apply, params=variables["params"],
                            tx=optax.adam(1e-3), batch_stats=variables.get("batch_stats", {}),
                            quant_state=variables.get(intercept.QUANT_STATE, {}))
  step = jax.jit(steps.make_train_step(model, plan, 10, seed=0, aux_loss_weight=1.0),
                 donate_argnames=("state",))
  batch = {"image": images, "label": labels}
  for _ in range(3):  # compile and warm up
    state, metrics = step(state, batch)
  jax.block_until_ready(metrics)
  return step, state, batch


def main(argv):
  del argv
  unknown = sorted(set(_ROWS.value) - set(ROWS))
  if unknown:
    raise app.UsageError(f"--rows: unknown {', '.join(unknown)}; valid: {', '.join(ROWS)}")
  shape = (28, 28, 1) if _MODEL.value in ("lenet5", "sequential") else (32, 32, 3)
  model = models.get_model(_MODEL.value, num_classes=10)
  images = jax.random.normal(jax.random.key(1), (_BATCH.value, *shape))
  labels = jax.random.randint(jax.random.key(2), (_BATCH.value,), 0, 10)
  layers = intercept.discover_layers(model, images[:2], train=False)
  builders = {name: (lambda plan=plan: build(model, plan, images, labels))
              for name, plan in variants(layers).items()}
  if want_peer():
    builders["qwix/W8A8 (peer)"] = lambda: build(qwix_model(model), None, images, labels)
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
  base = statistics.median(times["float"])
  lines = [
      f"# Training-step time against float ({_MODEL.value}, batch {_BATCH.value})",
      "",
      f"Generated by `python bench/step_time.py --model={_MODEL.value} "
      f"--batch_size={_BATCH.value} --steps={_STEPS.value} --reps={_REPS.value}` on "
      f"{datetime.date.today().isoformat()}, {machine()}; "
      f"median of {_REPS.value} interleaved repetitions of {_STEPS.value} steps.",
      "",
      "| variant | ms / step | ratio to float | within 1.3x |",
      "|---|---|---|---|",
  ]
  for name, ts in times.items():
    median = statistics.median(ts)
    ok = "" if name == "float" or "peer" in name else ("yes" if median / base <= 1.3 else "NO")
    lines.append(f"| {name} | {1e3 * median:.2f} | {median / base:.2f} | {ok} |")
  for name, error in failed.items():
    lines.append(f"| {name} | failed on this backend: {error} | | |")
  peer = [n for n in times if "peer" in n]
  if peer and "uniform/W8A8" in times:
    ours = statistics.median(times["uniform/W8A8"])
    theirs = statistics.median(times[peer[0]])
    lines += ["", f"quantjax uniform/W8A8 against {peer[0]}: {ours / theirs:.2f}x its step time "
              f"(target: at most 1.10x float, and faster than the peer: "
              f"{'met' if ours / base <= 1.10 and ours < theirs else 'NOT met'})."]
  text = "\n".join(lines) + "\n"
  print(text)
  if _OUT.value:
    os.makedirs(os.path.dirname(_OUT.value) or ".", exist_ok=True)
    with open(_OUT.value, "w") as f:
      f.write(text)


if __name__ == "__main__":
  jnp.zeros(())  # initialise the backend before timing anything
  app.run(main)
