"""Trains a model with quantjax (float or quantization-aware) and reports its accuracy.

  python train.py --config=configs/default.py --workdir=runs/default
  python train.py --config=configs/default.py --workdir=runs/w3 --config.quant.weight.bits=3
  python train.py --config=configs/ptq_mxqn.py --config.init_from=runs/float --workdir=runs/mxqn

`config.mode` picks gradient training ('train') or post-training quantization ('ptq').

Resumes from the latest intact checkpoint in --workdir, whose config.json must match (see
quantjax.workdir.record for the fields a resume may change); a finished run is not redone.
SIGTERM or SIGINT saves the current step and exits with one line (status 128 + the signal
number); rerun to resume. See configs/ for the available experiments.

Several processes (hosts, or local ones for a test) run the same command with --distributed;
`python -m quantjax.train.launch --num_processes=2 -- --config=... --workdir=...` starts them on
this machine.

A quantizer, model or dataset of your own is registered in a module you name with
`--import=my_quantizers.py` (repeatable) or in `config.imports`; the run records them, so
eval.py and the other tools on its workdir import them too.
"""

from absl import app, flags, logging
from ml_collections import config_flags

import quantjax.ptq
import quantjax.train
from quantjax import user_code
from quantjax.train import cli, distributed

_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and summary.")
config_flags.DEFINE_config_file("config", None, "Config file (configs/*.py).", lock_config=True)
_DISTRIBUTED = flags.DEFINE_bool(
    "distributed", False,
    "Start JAX's multi-process runtime first (several hosts, or several local processes from "
    "`python -m quantjax.train.launch`): the cluster's environment, or JAX_COORDINATOR_ADDRESS, "
    "JAX_NUM_PROCESSES and JAX_PROCESS_ID, say who is who.")
_HEARTBEAT = flags.DEFINE_integer(
    "heartbeat_timeout_s", distributed.HEARTBEAT_TIMEOUT_S,
    "With --distributed: a process silent for this long is declared dead, and the others stop.")
_IMPORTS = user_code.define_flag()  # imported by cli.parse_flags; recorded in config.imports
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  if _DISTRIBUTED.value:
    distributed.initialize(heartbeat_timeout_s=_HEARTBEAT.value)

  def run():
    config = flags.FLAGS.config  # a config file that failed to load raises here
    user_code.import_for_config(config, _IMPORTS.value)  # recorded in config.json
    if config.get("mode", "train") == "ptq":
      return quantjax.ptq.run(config, _WORKDIR.value)
    return quantjax.train.train_and_evaluate(config, _WORKDIR.value)

  summary = cli.run(run)  # bad input, NaN loss, SIGTERM/SIGINT: one line, no traceback
  if not distributed.is_lead():
    return
  print(f"test accuracy: {summary['accuracy']['test']:.4f}  "
        f"(validation {summary['accuracy']['validation']:.4f}; "
        f"model size {summary['model_size_kib']:.1f} KiB; summary: {_WORKDIR.value}/summary.json)")


if __name__ == "__main__":
  logging.set_verbosity(logging.INFO)
  app.run(main, flags_parser=cli.parse_flags)
