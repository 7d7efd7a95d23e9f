"""Trains a model with quantjax (float or quantization-aware) and reports its accuracy.

  python train.py --config=configs/default.py --workdir=runs/default
  python train.py --config=configs/default.py --workdir=runs/w3 --config.quant.weight.bits=3
  python train.py --config=configs/ptq_mxqn.py --config.init_from=runs/float --workdir=runs/mxqn

`config.mode` picks gradient training ('train') or post-training quantization ('ptq').

Resumes from the latest intact checkpoint in --workdir, whose config.json must match (see
quantjax.workdir.record for the fields a resume may change); a finished run is not redone.
SIGTERM or SIGINT saves the current step and exits with one line (status 128 + the signal
number); rerun to resume. See configs/ for the available experiments.

A quantizer, model or dataset of your own is registered in a module you name with
`--import=my_quantizers.py` (repeatable) or in `config.imports`; the run records them, so
eval.py and the other tools on its workdir import them too.
"""

import jax
from absl import app, flags, logging
from ml_collections import config_flags

import quantjax.ptq
import quantjax.train
from quantjax import user_code
from quantjax.train import cli

_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and summary.")
config_flags.DEFINE_config_file("config", None, "Config file (configs/*.py).", lock_config=True)
_DISTRIBUTED = flags.DEFINE_bool(
    "distributed", False,
    "Call jax.distributed.initialize() first (multi-host; the cluster's environment or the "
    "JAX_COORDINATOR_ADDRESS / process count and id variables say who is who).")
_IMPORTS = user_code.define_flag()  # imported by cli.parse_flags; recorded in config.imports
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  if _DISTRIBUTED.value:
    jax.distributed.initialize()

  def run():
    config = flags.FLAGS.config  # a config file that failed to load raises here
    user_code.import_for_config(config, _IMPORTS.value)  # recorded in config.json
    if config.get("mode", "train") == "ptq":
      return quantjax.ptq.run(config, _WORKDIR.value)
    return quantjax.train.train_and_evaluate(config, _WORKDIR.value)

  summary = cli.run(run)  # bad input, NaN loss, SIGTERM/SIGINT: one line, no traceback
  print(f"test accuracy: {summary['accuracy']['test']:.4f}  "
        f"(validation {summary['accuracy']['validation']:.4f}; "
        f"model size {summary['model_size_kib']:.1f} KiB; summary: {_WORKDIR.value}/summary.json)")


if __name__ == "__main__":
  logging.set_verbosity(logging.INFO)
  app.run(main, flags_parser=cli.parse_flags)
