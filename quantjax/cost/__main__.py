"""Prints the cost model of a workdir's quantization plan (per layer and against all-8-bit).

  python -m quantjax.cost --workdir=runs/fxp
"""

from __future__ import annotations

import sys

from absl import app, flags

from quantjax import user_code
from quantjax.cost.model import cost_report
from quantjax.cost.report import format_report

_WORKDIR = flags.DEFINE_string("workdir", None, "A workdir written by train.py.")
_IMPORTS = user_code.define_flag()  # besides the ones the run recorded
flags.mark_flags_as_required(["workdir"])


def main(argv):
  del argv
  from quantjax.train import experiment
  from quantjax.workdir import Workdir

  try:
    user_code.import_for_workdir(_WORKDIR.value, _IMPORTS.value)
    exp = experiment.build(Workdir(_WORKDIR.value).load_config(), training=False)
  except ValueError as e:
    sys.exit(f"error: {e}")
  print(format_report(cost_report(exp.layers, exp.plan)))


if __name__ == "__main__":
  app.run(main)
