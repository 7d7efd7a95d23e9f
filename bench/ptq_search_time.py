"""Wall time of Goyal et al.'s fixed-point search on the Sequential net (issue 14, target 5).

  python bench/ptq_search_time.py --init_from=runs/ptq/float_sequential --num_images=6000
  python bench/ptq_search_time.py --init_from=... --modes=fast,suffix,plain   # what each buys

Target: <= 3 minutes on 6,000 validation images with one compilation, and the choices of the
search without the speed-ups. mnist5k's validation split has 500 digits; until a larger one is
used here, they are tiled (repeated) to `--num_images`, which costs what as many distinct images
cost (the choices are those of the 500, each counted 12 times). The float run comes from
`--init_from` (a `configs/float.py --config.model=sequential` workdir, e.g. bench/ptq_table.py's).

Modes, each a full search from the same float network and calibration:
- `plain`: every candidate evaluated on the whole network (`quantjax.ptq.evaluator`), as before;
- `suffix`: only the layers after the one being searched, from a cached activation
  (`quantjax.ptq.suffix`), every image counted;
- `fast`: `suffix`, and a candidate stops counting once it has more wrong predictions than its
  budget allows (the images ordered by float margin, smallest first): configs/ptq_fixedpoint.py's
  default.
Per mode: wall and CPU seconds, evaluations, compilations (candidate program; cut-moving
program), and whether the choices and history equal the first mode's. Wall time on a shared
machine moves with its load: the CPU seconds and the load average are printed beside it.
"""

from __future__ import annotations

import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from configs import ptq_fixedpoint  # noqa: E402
from quantjax.ptq import calibration  # noqa: E402
from quantjax.ptq.evaluator import Evaluator  # noqa: E402
from quantjax.ptq.run import search_fixed_point  # noqa: E402
from quantjax.reports.machine import machine  # noqa: E402
from quantjax.train import checkpoint, experiment  # noqa: E402

_INIT_FROM = flags.DEFINE_string("init_from", "runs/ptq/float_sequential",
                                 "Workdir of a float Sequential run.")
_DATA_DIR = flags.DEFINE_string("data_dir", "", "tfds data_dir of mnist5k ('' = default).")
_NUM_IMAGES = flags.DEFINE_integer("num_images", 6000,
                                   "Validation images searched on (the split tiled to this).")
_MODES = flags.DEFINE_list("modes", ["fast"], "plain, suffix and/or fast (see the docstring).")
_MODEL = flags.DEFINE_string("model", "sequential", "The model of --init_from.")


def main(argv):
  del argv
  config = ptq_fixedpoint.get_config()
  config.model = _MODEL.value
  config.data_dir = _DATA_DIR.value
  config.init_from = _INIT_FROM.value
  exp = experiment.build(config, quantized=False, training=False)
  images, labels = calibration.split_arrays(exp.dataset, calibration.CALIBRATION_SPLIT,
                                            batch_size=config.eval_batch_size)
  reps = -(-_NUM_IMAGES.value // len(images))
  images = np.concatenate([images] * reps)[:_NUM_IMAGES.value]
  labels = np.concatenate([labels] * reps)[:_NUM_IMAGES.value]
  calib = images[:int(config.ptq.calibration_batches) * int(config.ptq.calibration_batch_size)]
  raw, _ = checkpoint.restore_variables(config.init_from)
  variables = {k: jax.tree_util.tree_map(jnp.asarray, raw[k]) for k in ("params", "batch_stats")
               if raw.get(k)}
  acc_fp = Evaluator(exp.model, None, images, labels, batch_size=config.eval_batch_size)(
      variables)
  records = calibration.record_layers(exp.model, variables, calib)
  print(f"# fixed-point search time, {config.model}, {len(images)} validation images "
        f"(mnist5k's {len(images) // reps} tiled x{reps}); float accuracy {acc_fp:.4f}")
  print(f"# {machine()}; load average at start {os.getloadavg()[0]:.1f}")
  print("| mode | wall s | CPU s | evaluations | compilations | same choices | val. acc |")
  print("|---|---|---|---|---|---|---|")
  first = None
  for mode in _MODES.value:
    if mode not in ("plain", "suffix", "fast"):
      raise ValueError(f"--modes entry {mode!r} is not valid; choose plain, suffix or fast")
    config.ptq.fast_search = mode != "plain"
    t0 = time.perf_counter()
    rules, report = search_fixed_point(exp, variables, records, images, labels, acc_fp,
                                       config.ptq, stop_early=mode == "fast")
    wall = time.perf_counter() - t0
    choices = (rules, [(r["bits"], r["frac"]) for r in report["history"]])
    same = "-" if first is None else ("yes" if choices == first else "NO")
    first = first or choices
    print(f"| {mode} | {wall:.0f} | {report['search_cpu_seconds']:.0f} | "
          f"{report['evaluations']} | {report['compilations']} + "
          f"{report.get('record_compilations', 0)} | {same} | "
          f"{report['validation_accuracy_search']:.4f} |", flush=True)
  print(f"# load average at end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
  app.run(main)
