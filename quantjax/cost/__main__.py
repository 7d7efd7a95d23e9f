"""Prints the cost model of a workdir's quantization plan (per layer and against all-8-bit).

  python -m quantjax.cost --workdir=runs/fxp
"""

from __future__ import annotations

import sys

from absl import app, flags

from quantjax.cost.model import cost_report

_WORKDIR = flags.DEFINE_string("workdir", None, "A workdir written by train.py.")
flags.mark_flags_as_required(["workdir"])


def format_report(report: dict) -> str:
  """The per-layer table and the totals as text."""
  lines = [f"{'layer':<14} {'b_w':>5} {'b_b':>5} {'b_in':>5} {'b_out':>5} {'memory bits':>12} "
           f"{'mult cost':>13} {'BOPs':>14} {'bytes':>8}"]
  for r in report["layers"]:
    lines.append(f"{r['layer']:<14} {r['weight_bits']:>5g} {r['bias_bits']:>5g} "
                 f"{r['input_bits']:>5g} {r['output_bits']:>5g} {r['memory_bits']:>12,.0f} "
                 f"{r['mult_cost']:>13,.0f} {r['bops']:>14,.0f} {r['param_bytes']:>8,}")
  total, ref, red = report["total"], report["reference_8bit"], report["reduction_vs_8bit"]
  for key in ("memory_bits", "mult_cost", "bops", "param_bytes"):
    lines.append(f"{key:<14} {total[key]:>16,.0f}  all-8-bit {ref[key]:>16,.0f}  "
                 f"reduction {100 * red[key]:6.1f} %")
  return "\n".join(lines)


def main(argv):
  del argv
  from quantjax.train import checkpoint, experiment

  try:
    exp = experiment.build(checkpoint.load_config(_WORKDIR.value), training=False)
  except ValueError as e:
    sys.exit(f"error: {e}")
  print(format_report(cost_report(exp.layers, exp.plan)))


if __name__ == "__main__":
  app.run(main)
