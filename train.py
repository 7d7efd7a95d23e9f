"""Trains a model with quantjax (float or quantization-aware) and reports its accuracy.

  python train.py --config=configs/default.py --workdir=runs/default
  python train.py --config=configs/default.py --workdir=runs/w3 --config.quant.weight.bits=3
  python train.py --config=configs/ptq_mxqn.py --config.init_from=runs/float --workdir=runs/mxqn

`config.mode` picks gradient training ('train') or post-training quantization ('ptq').

Resumes from the latest checkpoint in --workdir. See configs/ for the available experiments.
"""

import sys

import jax
from absl import app, flags, logging
from ml_collections import config_flags

import quantjax.ptq
import quantjax.train

_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and summary.")
config_flags.DEFINE_config_file("config", None, "Config file (configs/*.py).", lock_config=True)
_DISTRIBUTED = flags.DEFINE_bool(
    "distributed", False,
    "Call jax.distributed.initialize() first (multi-host; the cluster's environment or the "
    "JAX_COORDINATOR_ADDRESS / process count and id variables say who is who).")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  if _DISTRIBUTED.value:
    jax.distributed.initialize()
  try:
    config = flags.FLAGS.config
    if config.get("mode", "train") == "ptq":
      summary = quantjax.ptq.run(config, _WORKDIR.value)
    else:
      summary = quantjax.train.train_and_evaluate(config, _WORKDIR.value)
  except ValueError as e:  # bad input: one line, no traceback
    sys.exit(f"error: {e}")
  print(f"test accuracy: {summary['accuracy']['test']:.4f}  "
        f"(validation {summary['accuracy']['validation']:.4f}; "
        f"model size {summary['model_size_kib']:.1f} KiB; summary: {_WORKDIR.value}/summary.json)")


if __name__ == "__main__":
  logging.set_verbosity(logging.INFO)
  app.run(main)
