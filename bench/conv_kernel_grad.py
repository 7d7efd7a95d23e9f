"""Training steps with the convolutions' kernel gradient summed tap by tap, against XLA's own.

  python bench/conv_kernel_grad.py --out=results/conv_kernel_grad.md

For each model, a float and a uniform W8A8 (max scales) train step at `--batch_size` on one
device, compiled twice: `conv_kernel_grad='xla'` (XLA's kernel gradient) and 'auto' with its host
rule taken as met (tap by tap where the output map has >= 24x24 positions and the input >= 8
channels; `quantjax.intercept.conv`), so that every host times the same layers; the table says
whether 'auto' itself takes the taps on this host (`conv.taps_pay_here`). The four steps
run interleaved, `--steps` each per repetition; the ratio auto / xla is taken within each
repetition, and the table gives its median and interquartile range (range under 4 repetitions).
The first table times the kernel gradient of single convolutions (the registry's early-layer
shapes) the same way. Both ways compute the same sums in another order: the last column is the
largest difference of the parameters' gradients (one step of SGD from the same state),
relative to the largest gradient.
"""

from __future__ import annotations

import contextlib
import datetime
import statistics
import time
from unittest import mock

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import app, flags

from quantjax import intercept, models
from quantjax.intercept import conv
from quantjax.reports.machine import machine
from quantjax.train import optimizer, steps
from quantjax.train.state import TrainState
from quantjax.workdir import write_text_atomic

_MODELS = flags.DEFINE_list("models",
                            ["lenet5", "sequential", "resnet20", "vgg_small", "resnet18"],
                            "Models (quantjax.models).")
_BATCH = flags.DEFINE_integer("batch_size", 128, "Batch size (one device).")
_STEPS = flags.DEFINE_integer("steps", 2, "Steps per timed repetition.")
_REPS = flags.DEFINE_integer("reps", 5, "Interleaved repetitions.")
_OUT = flags.DEFINE_string("out", "", "Markdown output (optional).")

GRADS = ("xla", "auto")
MAX_W8 = dict(name="uniform", bits=8, granularity="channel", scale_method="max")
MAX_A8 = dict(name="uniform", bits=8, signed=False, scale_method="max")
# (map size, in channels, out channels, kernel, stride, padding): the registry's shapes
CONVS = ((28, 1, 32, 3, 1, "SAME"),  # sequential conv1_1
         (28, 32, 32, 3, 1, "SAME"),  # sequential conv1_2, conv2_x
         (32, 16, 16, 3, 1, "SAME"),  # resnet20 stage 1
         (32, 16, 32, 3, 2, "SAME"),  # resnet20 stage 2's first conv
         (16, 32, 32, 3, 1, "SAME"),  # resnet20 stage 2
         (28, 1, 6, 5, 1, "VALID"),  # lenet5 conv1
         (8, 64, 64, 3, 1, "SAME"),  # resnet20 stage 3
         (32, 64, 64, 3, 1, "SAME"))  # vgg_small block 1, resnet18 stage 1


def _spread(ratios: list[float]) -> str:
  if len(ratios) >= 4:
    q = statistics.quantiles(ratios, n=4)
    return f"{q[0]:.3f}-{q[2]:.3f}"
  return f"{min(ratios):.3f}-{max(ratios):.3f}"


def _interleaved(fns: dict[str, tuple], reps: int, steps_per_rep: int) -> dict[str, list[float]]:
  """Seconds per call of every `fn(*args)`, repetition by repetition, in turn."""
  times: dict[str, list[float]] = {name: [] for name in fns}
  for _ in range(reps):
    for name, (fn, args) in fns.items():
      start = time.perf_counter()
      for _ in range(steps_per_rep):
        out = fn(*args)
      jax.block_until_ready(out)
      times[name].append((time.perf_counter() - start) / steps_per_rep)
  return times


def conv_rows() -> list[str]:
  """Single convolutions: loss gradient with respect to input and kernel, xla against taps."""
  lines = ["| map | in | out | kernel | stride | xla ms | taps ms | taps / xla (IQR) |",
           "|---|---|---|---|---|---|---|---|"]
  rs = np.random.RandomState(0)
  for size, cin, cout, k, stride, padding in CONVS:
    x = jnp.asarray(rs.randn(_BATCH.value, size, size, cin).astype(np.float32))
    w = jnp.asarray(rs.randn(k, k, cin, cout).astype(np.float32))
    fns = {}
    for grad in ("xla", "taps"):
      def loss(x, w, grad=grad, stride=stride, padding=padding):
        y = conv.conv_general_dilated(x, w, (stride, stride), padding,
                                      dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                      kernel_grad=grad)
        return jnp.sum(jnp.square(y))
      fn = jax.jit(jax.grad(loss, argnums=(0, 1)))
      jax.block_until_ready(fn(x, w))
      fns[grad] = (fn, (x, w))
    times = _interleaved(fns, _REPS.value, 3)
    ratios = [a / b for a, b in zip(times["taps"], times["xla"], strict=True)]
    lines.append(f"| {size}x{size} | {cin} | {cout} | {k}x{k} | {stride} | "
                 f"{1e3 * statistics.median(times['xla']):.1f} | "
                 f"{1e3 * statistics.median(times['taps']):.1f} | "
                 f"{statistics.median(ratios):.3f} ({_spread(ratios)}) |")
    print(lines[-1], flush=True)
  return lines


def _build(model, plan, grad, images, labels, base=None):
  variables = intercept.quantized_init(model, plan)({"params": jax.random.key(0)}, images,
                                                    train=False)
  tx = optimizer.partitioned(base or optax.adam(1e-3), intercept.quantizer_params(
      model, variables["params"], images, train=False))
  state = TrainState.create(apply_fn=model.apply, params=variables["params"], tx=tx,
                            batch_stats=variables.get("batch_stats", {}),
                            quant_state=variables.get(intercept.QUANT_STATE, {}))
  step = jax.jit(steps.make_train_step(model, plan, 10, seed=0, conv_kernel_grad=grad))
  batch = {"image": images, "label": labels}
  # 'auto' on any host as on one where the taps pay (traced here, at the first call).
  host_rule = (mock.patch.object(conv, "taps_pay_here", lambda: True) if grad == "auto"
               else contextlib.nullcontext())
  with host_rule:
    jax.block_until_ready(step(state, batch))  # compile
  return step, (state, batch)


def _gradient_difference(model, plan, images, labels) -> float:
  """max |g_auto - g_xla| over the parameters, relative to max |g_xla|: one step of plain SGD
  with learning rate 1 from the same state (its update is the gradient; Adam's would turn a
  near-zero gradient's rounding into a whole step)."""
  updates = []
  for grad in GRADS:
    step, (state, batch) = _build(model, plan, grad, images, labels, base=optax.sgd(1.0))
    new = step(state, batch)[0]
    updates.append(jax.tree_util.tree_map(lambda p, q: p - q, new.params, state.params))
  diff = jax.tree_util.tree_leaves(jax.tree_util.tree_map(
      lambda a, b: jnp.max(jnp.abs(a - b)), *updates))
  size = jax.tree_util.tree_leaves(jax.tree_util.tree_map(lambda a: jnp.max(jnp.abs(a)),
                                                          updates[0]))
  return float(max(diff)) / max(float(max(size)), 1e-30)


def step_rows() -> list[str]:
  lines = ["| model | variant | xla ms / step | auto ms / step | auto / xla (IQR) | "
           "gradient difference |", "|---|---|---|---|---|---|"]
  for name in _MODELS.value:
    shape = (28, 28, 1) if name in ("lenet5", "sequential") else (32, 32, 3)
    model = models.get_model(name, num_classes=10)
    images = jax.random.normal(jax.random.key(1), (_BATCH.value, *shape))
    labels = jax.random.randint(jax.random.key(2), (_BATCH.value,), 0, 10)
    layers = intercept.discover_layers(model, images[:2], train=False)
    plans = {"float": None,
             "uniform/W8A8-max": intercept.resolve(
                 layers, weight=MAX_W8, act=MAX_A8, first_layer={"weight": MAX_W8, "act": None},
                 last_layer={"weight": MAX_W8})}
    for variant, plan in plans.items():
      diff = _gradient_difference(model, plan, images, labels)
      fns = {grad: _build(model, plan, grad, images, labels) for grad in GRADS}
      times = _interleaved(fns, _REPS.value, _STEPS.value)
      ratios = [a / b for a, b in zip(times["auto"], times["xla"], strict=True)]
      lines.append(f"| {name} | {variant} | {1e3 * statistics.median(times['xla']):.1f} | "
                   f"{1e3 * statistics.median(times['auto']):.1f} | "
                   f"{statistics.median(ratios):.3f} ({_spread(ratios)}) | {diff:.1e} |")
      print(lines[-1], flush=True)
  return lines


def main(argv):
  del argv
  convs, step_table = conv_rows(), step_rows()
  command = ("python bench/conv_kernel_grad.py"
             + (f" --models={','.join(_MODELS.value)}" if _MODELS.value != _MODELS.default
                else "")
             + f" --batch_size={_BATCH.value} --steps={_STEPS.value} --reps={_REPS.value}")
  text = "\n".join([
      "# The convolutions' kernel gradient: tap by tap against XLA's (training steps, CPU)", "",
      f"Generated by `{command}` on {datetime.date.today().isoformat()}, {machine()}; one "
      f"device, batch {_BATCH.value}, {_REPS.value} interleaved repetitions, the ratio taken "
      "within each (median, interquartile range).", "",
      "Single convolutions, the gradient of a sum of squares with respect to input and kernel:",
      "", *convs, "",
      f"Training steps ({_STEPS.value} per repetition; `conv_kernel_grad` 'auto' is the "
      "default; 'auto' here takes the taps wherever its shape rule does, as on a host where "
      f"they pay; on this host 'auto' itself takes them: "
      f"{'yes' if conv.taps_pay_here() else 'no, XLA gradient everywhere'}):", "",
      *step_table, ""])
  print(text)
  if _OUT.value:
    write_text_atomic(_OUT.value, text)


if __name__ == "__main__":
  app.run(main)
