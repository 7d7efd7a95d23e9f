"""Exports a training workdir's checkpoint to the integer format (a directory).

  python -m quantjax.export --workdir=runs/default --out=runs/default/int_graph

Prints the per-layer hardware report. Load it with `quantjax.export.format.load(out)` and run it
with `quantjax.intsim.Emulator`.
"""

import sys

from absl import app, flags

_WORKDIR = flags.DEFINE_string("workdir", None, "Workdir written by train.py.")
_OUT = flags.DEFINE_string("out", None, "Output directory (graph.json + tensors.bin).")
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step; default: the latest.")
_MULT_BITS = flags.DEFINE_integer("mult_bits", 31, "Width of the requantization multipliers.")
_INPUT_FRAC = flags.DEFINE_integer(
    "input_frac_bits", 4, "Fractional bits of the normalised input image below the pixel step.")
flags.mark_flags_as_required(["workdir", "out"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  from quantjax.export import format as format_lib
  from quantjax.export.workdir import export_workdir
  from quantjax.intsim.report import format_report, hardware_report

  try:
    graph = export_workdir(_WORKDIR.value, _STEP.value, mult_bits=_MULT_BITS.value,
                           input_frac_bits=_INPUT_FRAC.value)
  except ValueError as e:
    sys.exit(f"error: {e}")
  format_lib.save(graph, _OUT.value)
  print(format_report(hardware_report(graph)))
  print(f"wrote {_OUT.value} ({len(graph.nodes)} nodes, {len(graph.tensors)} tensors)")


if __name__ == "__main__":
  app.run(main)
