"""Integer emulation against fake-quant on mnist5k test: top-1 agreement and accuracy per method.

  python bench/int_agreement.py --root=runs/int_agreement
  python bench/int_agreement.py --root=runs/int_agreement --epochs=5 --float_epochs=30

Trains (or reuses, when <root>/<row>/summary.json exists) a float LeNet-5 and, fine-tuned from it,
uniform W8A8, uniform W4A4, ESB, NUUQ and Liss (configs/uniform_w4a4.py, esb.py, nuuq.py, liss.py)
plus Goyal et al.'s fixed-point PTQ (configs/ptq_fixedpoint.py), each with `train.py`. Each run is
exported (quantjax.export), written and read back through the on-disk format, and run on the
emulator (32-bit saturating accumulator, half-even requantization); its test predictions are
compared with the fake-quant model's on the same images. A 16-bit accumulator run shows the
overflow counts. Writes results/int_agreement.md and .json (with the date and machine).
"""

from __future__ import annotations

import datetime
import json
import os
import shlex
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags  # noqa: E402

_ROOT = flags.DEFINE_string("root", "runs/int_agreement", "Where the runs live (reused if done).")
_EPOCHS = flags.DEFINE_float("epochs", None, "Fine-tuning epochs; default: each config's (20).")
_FLOAT_EPOCHS = flags.DEFINE_float("float_epochs", None, "Float epochs; default: config's (80).")
_OUT = flags.DEFINE_string("out_dir", "results", "Where int_agreement.md/.json go.")
_ONLY = flags.DEFINE_string("only", "", "Comma-separated row names to run (default: all).")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ROWS = [  # name, config, extra overrides
    ("uniform_w8a8", "configs/uniform_w4a4.py",
     ["--config.quant.weight.bits=8", "--config.quant.act.bits=8"]),
    ("uniform_w4a4", "configs/uniform_w4a4.py", []),
    ("esb_w4k2", "configs/esb.py", []),
    ("nuuq4", "configs/nuuq.py", []),
    ("liss_w4a4", "configs/liss.py", []),
    ("ptq_fixedpoint", "configs/ptq_fixedpoint.py", []),
]


def _train(name: str, config: str, extra: list[str], epochs: float | None) -> list[str]:
  workdir = os.path.join(_ROOT.value, name)
  cmd = [sys.executable, "train.py", f"--config={config}", f"--workdir={workdir}", *extra]
  if name != "float":
    cmd.append(f"--config.init_from={os.path.join(_ROOT.value, 'float')}")
  if epochs is not None and "ptq" not in name:
    cmd.append(f"--config.num_epochs={epochs}")
  if not os.path.exists(os.path.join(workdir, "summary.json")):
    print("running:", shlex.join(cmd[1:]), flush=True)
    subprocess.run(cmd, cwd=REPO, check=True)
  return cmd[1:]


def main(argv):
  del argv
  from quantjax.export import export_run, load_run
  from quantjax.export import format as format_lib
  from quantjax.intsim import Accelerator
  from quantjax.intsim.evaluate import compare, raw_split
  from quantjax.reports.machine import machine
  from quantjax.workdir import write_text_atomic

  commands = {"float": _train("float", "configs/float.py", [], _FLOAT_EPOCHS.value)}
  rows = [r for r in ROWS if not _ONLY.value or r[0] in _ONLY.value.split(",")]
  results = {}
  for name, config, extra in rows:
    commands[name] = _train(name, config, extra, _EPOCHS.value)
    exp, variables, step = load_run(os.path.join(_ROOT.value, name))
    graph = export_run(exp, variables)
    with tempfile.TemporaryDirectory() as tmp:  # through the on-disk format and back
      format_lib.save(graph, tmp)
      graph = format_lib.load(tmp)
    images, labels = raw_split(exp.dataset, "test")
    r32 = compare(exp, variables, graph, images, labels, Accelerator())
    r16 = compare(exp, variables, graph, images, labels, Accelerator(acc_bits=16))
    results[name] = {
        "step": step, "agreement": r32["agreement"], "accuracy_int": r32["accuracy_int"],
        "accuracy_fakequant": r32["accuracy_fakequant"], "overflows_acc32": r32["overflows"],
        "overflows_acc16": r16["overflows"], "agreement_acc16": r16["agreement"],
        "accuracy_int_acc16": r16["accuracy_int"], "hardware": r32["hardware"],
        "num_examples": r32["num_examples"],
    }
    print(name, {k: v for k, v in results[name].items() if k != "hardware"}, flush=True)
  date = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
  command = shlex.join(["python", "bench/int_agreement.py", *sys.argv[1:]])
  lines = [
      "# Integer emulation vs fake-quant (LeNet-5, mnist5k test)", "",
      f"Generated {date} on {machine()} by `{command}`.", "",
      "Each run exported to integers, saved and reloaded through the on-disk format, run on the "
      "jax.lax emulator (32-bit saturating accumulator, half-even requantization), and compared "
      "with the fake-quant model on the same 1,000 test digits. Targets: agreement >= 99.5 %, "
      "|accuracy difference| <= 0.2 points, no overflow at 32 bits.", "",
      "| run | top-1 agreement | int acc. | fake-quant acc. | diff (points) | overflows @32 | "
      "overflows @16 | int acc. @16 | check |",
      "|---|---|---|---|---|---|---|---|---|",
  ]
  for name, r in results.items():
    diff = 100 * (r["accuracy_int"] - r["accuracy_fakequant"])
    ok = r["agreement"] >= 0.995 and abs(diff) <= 0.2 + 1e-9 and r["overflows_acc32"] == 0
    lines.append(
        f"| {name} | {100 * r['agreement']:.1f} % | {100 * r['accuracy_int']:.1f} % | "
        f"{100 * r['accuracy_fakequant']:.1f} % | {diff:+.1f} | {r['overflows_acc32']} | "
        f"{r['overflows_acc16']} | {100 * r['accuracy_int_acc16']:.1f} % | "
        f"{'PASS' if ok else 'FAIL'} |")
  lines += ["", "Training commands (run from the repository root):", ""]
  lines += [f"- {name}: `python {shlex.join(cmd)}`" for name, cmd in commands.items()]
  from quantjax.intsim.report import format_report
  for name, r in results.items():
    lines += ["", f"## Hardware report: {name}", "", format_report(r["hardware"])]
  os.makedirs(_OUT.value, exist_ok=True)
  write_text_atomic(os.path.join(_OUT.value, "int_agreement.json"), json.dumps(
      {"date": date, "machine": machine(), "command": command, "commands": commands,
       "results": results}, indent=1))
  write_text_atomic(os.path.join(_OUT.value, "int_agreement.md"), "\n".join(lines) + "\n")
  print("\n".join(lines[:12 + len(results)]))


if __name__ == "__main__":
  app.run(main)
