"""A trained layer's weight histogram with its quantizer's levels overlaid.

  python -m quantjax.reports.levels --workdir=runs/nuuq4 --layer=fc1 --out=results/levels_nuuq.png
  python -m quantjax.reports.levels --workdir=runs/esb_w4k2 --layer='fc.*1' --channel=3 \
    --out=results/levels_esb.png

Reads the run's config and latest (or `--step`) checkpoint, and asks the layer's weight quantizer
for its level set through the contract, `levels(params, state, x, role='weight')`, given the
trained kernel and quantizer variables. A quantizer with one scale per output channel has one
level set per channel: the plot shows `--channel` (default 0), its weights and its levels.
"""

from __future__ import annotations

import dataclasses
import re
import sys

import jax.numpy as jnp
import numpy as np
from absl import app, flags, logging

from quantjax import user_code
from quantjax.train import checkpoint, experiment
from quantjax.workdir import Workdir

_PREFIX = "kernel_"  # the interceptor's prefix of a weight quantizer's variables


@dataclasses.dataclass
class LayerLevels:
  """What the plot shows: a layer's weights and the values its quantizer can represent."""

  layer: str  # module path, e.g. 'fc1'
  quantizer: str  # the quantizer's describe(), e.g. 'nuuq4/b8/pow2'
  step: int  # checkpoint step
  channel: int | None  # output channel shown (None = the whole tensor)
  weights: np.ndarray  # the latent float weights shown, flattened
  levels: np.ndarray  # distinct levels, ascending


def _select_layer(plan, pattern: str) -> str:
  """The quantized-weight layer named by `pattern` (an exact path, or a regex matching one)."""
  valid = [path for path, lq in plan.layers if lq.weight is not None]
  if not valid:
    raise ValueError("this run has no quantized weights (a float run?)")
  if pattern in valid:
    return pattern
  try:
    matched = [p for p in valid if re.fullmatch(pattern, p)]
  except re.error as e:
    raise ValueError(f"--layer={pattern!r} is not a valid regex ({e}); valid layers: "
                     f"{', '.join(valid)}") from None
  if len(matched) != 1:
    what = "no" if not matched else f"{len(matched)} ({', '.join(matched)}), not one"
    raise ValueError(f"--layer={pattern!r} matches {what} layer with quantized weights; "
                     f"valid layers: {', '.join(valid)}")
  return matched[0]


def _subtree(tree: dict, path: str) -> dict:
  for part in path.split("/"):
    tree = (tree or {}).get(part, {})
  return tree


def _channel_slice(value, channel: int, num_channels: int) -> np.ndarray:
  """`value[..., c:c+1]` for per-channel arrays (last axis = output channels), else `value`."""
  value = np.asarray(value)
  if value.ndim and value.shape[-1] == num_channels:
    return value[..., channel:channel + 1]
  return value


def layer_levels(workdir: str, layer: str, *, channel: int | None = None,
                 step: int | None = None) -> LayerLevels:
  """The weights and level set of `layer` in the checkpoint of `workdir`.

  Raises:
    ValueError: not a workdir, no such checkpoint, or `layer` names no single quantized layer.
  """
  exp = experiment.build(Workdir(workdir).load_config())
  path = _select_layer(exp.plan, layer)
  quantizer = exp.plan.get(path).weight
  variables, step = checkpoint.restore_variables(workdir, step)
  params = _subtree(variables["params"], path)
  state = _subtree(variables["quant_state"], path)
  kernel = np.asarray(params["kernel"], np.float32)  # [..., Cout]
  qparams = {k[len(_PREFIX):]: v for k, v in params.items() if k.startswith(_PREFIX)}
  qstate = {k[len(_PREFIX):]: v for k, v in state.items() if k.startswith(_PREFIX)}

  num_channels = kernel.shape[-1]
  per_channel = getattr(quantizer, "granularity", "tensor") == "channel"
  if channel is None and per_channel:
    channel = 0
  if channel is not None and not 0 <= channel < num_channels:
    raise ValueError(f"--channel={channel} is out of range; layer {path!r} has {num_channels} "
                     "output channels")
  x = kernel
  if per_channel:  # one level set per channel: keep that channel's slice of everything
    x = _channel_slice(kernel, channel, num_channels)
    qparams = {k: _channel_slice(v, channel, num_channels) for k, v in qparams.items()}
    qstate = {k: _channel_slice(v, channel, num_channels) for k, v in qstate.items()}
  levels = quantizer.levels(
      {k: jnp.asarray(v) for k, v in qparams.items()},
      {k: jnp.asarray(v) for k, v in qstate.items()},
      jnp.asarray(x), role="weight")
  shown = kernel if channel is None else kernel[..., channel]
  return LayerLevels(layer=path, quantizer=quantizer.describe(), step=step, channel=channel,
                     weights=np.ravel(shown), levels=np.unique(np.asarray(levels, np.float64)))


def plot_levels(result: LayerLevels, out: str, *, title: str = "") -> None:
  """Writes the histogram of `result.weights` with each level as a vertical line."""
  import matplotlib  # the optional 'plots' extra: only plotting needs it

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  w, levels = result.weights, result.levels
  span = max(float(np.max(np.abs(w))), 1e-12)
  lo, hi = -1.15 * span, 1.15 * span
  inside = levels[(levels >= lo) & (levels <= hi)]
  fig, ax = plt.subplots(figsize=(7, 3.5))
  ax.hist(w, bins=min(120, max(40, w.size // 10)), range=(lo, hi), color="0.6")
  for level in inside:
    ax.axvline(level, color="tab:red", linewidth=0.8, alpha=0.8)
  where = "" if result.channel is None else f", output channel {result.channel}"
  beyond = len(levels) - len(inside)
  note = f" ({beyond} beyond the axis)" if beyond else ""
  ax.set_title(title or f"{result.layer}{where}: {result.quantizer}, {len(levels)} levels{note}, "
               f"step {result.step}", fontsize="medium")
  ax.set_xlim(lo, hi)
  ax.set_xlabel("weight value (latent float); red: quantizer levels")
  ax.set_ylabel("weights")
  fig.tight_layout()
  fig.savefig(out, dpi=120)
  plt.close(fig)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  try:
    user_code.import_for_workdir(_WORKDIR.value, _IMPORTS.value)
    result = layer_levels(_WORKDIR.value, _LAYER.value, channel=_CHANNEL.value, step=_STEP.value)
  except ValueError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(1)
  plot_levels(result, _OUT.value)
  print(f"{result.layer}: {result.quantizer}, {len(result.levels)} levels -> {_OUT.value}")


if __name__ == "__main__":
  # Flags exist only when this runs as a program, so importing the module defines none.
  _WORKDIR = flags.DEFINE_string("workdir", None, "A trained run's workdir.")
  _LAYER = flags.DEFINE_string("layer", None, "Layer path (e.g. fc1) or a regex matching one.")
  _OUT = flags.DEFINE_string("out", None, "PNG to write, e.g. results/levels_nuuq.png.")
  _CHANNEL = flags.DEFINE_integer("channel", None, "Output channel (default 0 if per-channel).")
  _STEP = flags.DEFINE_integer("step", None, "Checkpoint step (default the latest).")
  _IMPORTS = user_code.define_flag()  # besides the ones the run recorded
  flags.mark_flags_as_required(["workdir", "layer", "out"])
  logging.set_verbosity(logging.WARNING)
  app.run(main)
