"""Evaluates a workdir's latest (or a named) checkpoint on a split; prints accuracy, writes JSON.

  python eval.py --workdir=runs/default --split=test --mode=fakequant
  python eval.py --workdir=runs/default --mode=float --step=500
"""

import sys

from absl import app, flags, logging

import quantjax.train

_WORKDIR = flags.DEFINE_string("workdir", None, "Workdir written by train.py.")
_SPLIT = flags.DEFINE_enum("split", "test", ["train", "validation", "test"], "Split to evaluate.")
_MODE = flags.DEFINE_enum(
    "mode", "fakequant", ["float", "fakequant"],
    "fakequant: with the run's quantizers; float: the same weights unquantized.")
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step; default: the latest.")
_BATCH = flags.DEFINE_integer("batch_size", None, "Evaluation batch size; default: the run's.")
_OUTPUT = flags.DEFINE_string(
    "output", None, "JSON output; default <workdir>/eval_<split>_<mode>_<step>.json.")
flags.mark_flags_as_required(["workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  try:
    result = quantjax.train.evaluate_workdir(
        _WORKDIR.value, split=_SPLIT.value, mode=_MODE.value, step=_STEP.value,
        batch_size=_BATCH.value, output=_OUTPUT.value)
  except ValueError as e:  # bad input: one line, no traceback
    sys.exit(f"error: {e}")
  print(f"{result['split']} accuracy ({result['mode']}, step {result['step']}): "
        f"{result['accuracy']:.4f} on {result['num_examples']} examples")


if __name__ == "__main__":
  logging.set_verbosity(logging.INFO)
  app.run(main)
