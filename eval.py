"""Evaluates a workdir's latest (or a named) checkpoint on a split; prints accuracy, writes JSON.

  python eval.py --workdir=runs/default --split=test --mode=fakequant
  python eval.py --workdir=runs/default --mode=float --step=500
  python eval.py --workdir=runs/default --mode=int --acc_bits=16 --overflow=wrap

The modules the run imported (train.py's --import, config.imports) are imported again first.
"""

from absl import app, flags, logging

import quantjax.train
from quantjax import user_code
from quantjax.train import cli

_WORKDIR = flags.DEFINE_string("workdir", None, "Workdir written by train.py.")
_SPLIT = flags.DEFINE_enum("split", "test", ["train", "validation", "test"], "Split to evaluate.")
_MODE = flags.DEFINE_enum(
    "mode", "fakequant", ["float", "fakequant", "int"],
    "fakequant: with the run's quantizers; float: the same weights unquantized; int: exported to "
    "integers and run on the accelerator emulator (quantjax.intsim), compared with fakequant.")
_ACC_BITS = flags.DEFINE_integer("acc_bits", 32, "--mode=int: accumulator width (8 to 32).")
_OVERFLOW = flags.DEFINE_string("overflow", "saturate", "--mode=int: 'saturate' or 'wrap'.")
_ROUNDING = flags.DEFINE_string(
    "rounding", "half_even", "--mode=int: requantization rounding: half_even, half_up, floor.")
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step; default: the latest.")
_BATCH = flags.DEFINE_integer("batch_size", None, "Evaluation batch size; default: the run's.")
_OUTPUT = flags.DEFINE_string(
    "output", None, "JSON output; default <workdir>/eval_<split>_<mode>_<step>.json.")
_IMPORTS = user_code.define_flag()  # besides the ones the run recorded
flags.mark_flags_as_required(["workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  cli.run(lambda: user_code.import_for_workdir(_WORKDIR.value, _IMPORTS.value))
  if _MODE.value == "int":
    return cli.run(_main_int)
  result = cli.run(lambda: quantjax.train.evaluate_workdir(  # bad input: one line
      _WORKDIR.value, split=_SPLIT.value, mode=_MODE.value, step=_STEP.value,
      batch_size=_BATCH.value, output=_OUTPUT.value))
  print(f"{result['split']} accuracy ({result['mode']}, step {result['step']}): "
        f"{result['accuracy']:.4f} on {result['num_examples']} examples")


def _main_int():
  from quantjax.intsim import Accelerator, evaluate
  from quantjax.intsim.report import format_report

  accel = Accelerator(acc_bits=_ACC_BITS.value, overflow=_OVERFLOW.value, rounding=_ROUNDING.value)
  result = evaluate.evaluate_int(_WORKDIR.value, split=_SPLIT.value, step=_STEP.value, accel=accel,
                                 batch_size=_BATCH.value or 250, output=_OUTPUT.value)
  print(format_report(result["hardware"]))
  print(f"{result['split']} accuracy (int, step {result['step']}): {result['accuracy_int']:.4f}; "
        f"fakequant {result['accuracy_fakequant']:.4f}; top-1 agreement {result['agreement']:.4f} "
        f"on {result['num_examples']} examples; {result['overflows']} accumulator overflows")


if __name__ == "__main__":
  logging.set_verbosity(logging.INFO)
  app.run(main)
