"""Exports a training workdir's checkpoint to the integer format (a directory) or to ONNX.

  python -m quantjax.export --workdir=runs/default  # writes runs/default/int_graph
  python -m quantjax.export --workdir=runs/default --format=qonnx --out=runs/default/model.onnx
  python -m quantjax.export --workdir=runs/default --format=qdq --out=runs/default/qdq.onnx

Prints the per-layer hardware report. Load the integer format with
`quantjax.export.format.load(out)` and run it with `quantjax.intsim.Emulator`; the ONNX formats
(`pip install -e '.[onnx]'`) are described in quantjax/export/qonnx.py and qdq.py.
"""

import sys

from absl import app, flags

from quantjax import user_code

_WORKDIR = flags.DEFINE_string("workdir", None, "Workdir written by train.py.")
_OUT = flags.DEFINE_string(
    "out", None, "Output: --format=int, a directory (graph.json, tensors.bin, manifest.json; "
    "default <workdir>/int_graph); otherwise the .onnx file (required).")
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step; default: the latest.")
_MULT_BITS = flags.DEFINE_integer("mult_bits", 31, "Width of the requantization multipliers.")
_INPUT_FRAC = flags.DEFINE_integer(
    "input_frac_bits", 4, "Fractional bits of the normalised input image below the pixel step.")
_FORMAT = flags.DEFINE_enum(
    "format", "int", ["int", "qonnx", "qdq", "onnx"],
    "int: graph.json + tensors.bin; qonnx: QONNX .onnx (Quant, Trunc, MultiThreshold), checked by "
    "qonnx's cleanup; qdq: QuantizeLinear/DequantizeLinear .onnx for uniform 8-bit models; "
    "onnx: ConvInteger/MatMulInteger .onnx (uniform <= 8-bit).")
_BATCH = flags.DEFINE_integer("batch_size", 1, "qonnx: the graph's static batch size.")
_IMPORTS = user_code.define_flag()  # besides the ones the run recorded
flags.mark_flags_as_required(["workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  from quantjax.export import format as format_lib
  from quantjax.export.workdir import export_workdir
  from quantjax.intsim.report import format_report, hardware_report
  from quantjax.reports import progress
  from quantjax.workdir import Workdir

  out = _OUT.value
  # Two stages: lowering the checkpoint (the long one), then writing the format.
  stages = progress.bar(total=2, desc="export", unit="stage")
  try:
    user_code.import_for_workdir(_WORKDIR.value, _IMPORTS.value)
    if out is None and _FORMAT.value != "int":
      raise ValueError(f"--format={_FORMAT.value} needs --out (the .onnx file to write)")
    out = out or Workdir(_WORKDIR.value).export_dir
    stages.set_postfix_str("lowering the checkpoint")
    graph = export_workdir(_WORKDIR.value, _STEP.value, mult_bits=_MULT_BITS.value,
                           input_frac_bits=_INPUT_FRAC.value)
    stages.update(1)
    stages.set_postfix_str(f"writing {_FORMAT.value}")
    if _FORMAT.value == "int":
      format_lib.save(graph, out)  # an --out that is a file: one line
    else:
      from quantjax.export.onnx import save_onnx

      save_onnx(graph, out, _FORMAT.value, batch_size=_BATCH.value)
    stages.update(1)
  except ValueError as e:
    sys.exit(f"error: {e}")
  finally:
    stages.close()
  print(format_report(hardware_report(graph)))
  print(f"wrote {out} ({_FORMAT.value}; {len(graph.nodes)} nodes, "
        f"{len(graph.tensors)} tensors)")


if __name__ == "__main__":
  app.run(main)
