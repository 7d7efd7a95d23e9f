"""Prints the cost model of a workdir's quantization plan (per layer and against all-8-bit).

  python -m quantjax.cost --workdir=runs/fxp
"""

from __future__ import annotations

import sys

from absl import app, flags

from quantjax.cost.model import cost_report
from quantjax.cost.report import format_report

_WORKDIR = flags.DEFINE_string("workdir", None, "A workdir written by train.py.")
flags.mark_flags_as_required(["workdir"])


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
