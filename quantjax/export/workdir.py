"""Exporting a training workdir (config.json + checkpoint) to the integer graph."""

from __future__ import annotations

from typing import Any

from quantjax.export.graph import Graph
from quantjax.export.lower import lower
from quantjax.train import checkpoint, experiment
from quantjax.workdir import Workdir


def load_run(workdir: str, step: int | None = None) -> tuple[experiment.Experiment, dict, int]:
  """(experiment, variables as NumPy, step) of a workdir's latest (or `step`) checkpoint."""
  config = Workdir(workdir).load_config()
  exp = experiment.build(config, quantized=True, training=False)
  variables, step = checkpoint.restore_variables(workdir, step)
  return exp, {k: v for k, v in variables.items() if v}, step


def export_run(exp: experiment.Experiment, variables: dict[str, Any], *, mult_bits: int = 31,
               input_frac_bits: int = 4, meta: dict[str, Any] | None = None) -> Graph:
  """The integer graph of an experiment's model with these (trained) variables."""
  if not 8 <= mult_bits <= 31:
    raise ValueError(f"mult_bits={mult_bits!r} is out of range; valid: integers 8 to 31")
  if not 0 <= input_frac_bits <= 12:
    raise ValueError(f"input_frac_bits={input_frac_bits!r} is out of range; valid: 0 to 12")
  spec = exp.dataset.spec
  return lower(exp.config.model, exp.model, variables, exp.plan, spec.image_shape, spec.mean,
               spec.std, mult_bits=mult_bits, input_frac_bits=input_frac_bits,
               meta={"dataset": spec.name, **(meta or {})})


def export_workdir(workdir: str, step: int | None = None, **kwargs) -> Graph:
  """The integer graph of a workdir's checkpoint (see `export_run` for the options)."""
  exp, variables, step = load_run(workdir, step)
  return export_run(exp, variables, meta={"workdir": workdir, "step": int(step)}, **kwargs)
