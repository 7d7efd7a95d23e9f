"""bench/memory.py's phases table from hand-made phase marks (no job is run).

The script defines absl flags that other bench scripts define too, so it is imported in a child
process, as it runs.
"""

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

_TABLE = """
import json, sys
sys.path.insert(0, {bench!r})
from absl import flags
import memory
flags.FLAGS(["memory", "--phase_steps=20"])
print(json.dumps(memory._phases_table(json.loads(sys.argv[1]), "train float")))
"""


def _job(data, init, compile_, steps):
  """Phase marks from (start, peak) pairs; each phase starts where the one before ended."""
  marks = {}
  for name, (start, peak) in zip(("data", "init", "compile", "steps"),
                                 (data, init, compile_, steps), strict=True):
    marks[name] = {"start": start, "peak": peak, "end": peak}
  return {"phases": marks, "imported_mib": data[0],
          "peak_mib": max(p["peak"] for p in marks.values())}


def test_phases_table_gives_each_phase_its_peak_what_it_added_and_the_peak_phase():
  results = {
      # Float: the steps set the peak (500), 100 above the 400 the compilation left.
      "train float": [_job((240, 260), (255, 370), (370, 400), (400, 500)),
                      _job((240, 262), (257, 372), (372, 404), (404, 520))],
      # Quantized: the compilation sets it (650 and 610), 250 and 210 above its start.
      "train esb/W4A4-k2": [_job((240, 258), (255, 400), (400, 650), (480, 560)),
                            _job((240, 258), (255, 400), (400, 610), (480, 580))],
  }
  out = subprocess.run([sys.executable, "-c", _TABLE.format(bench=os.path.join(ROOT, "bench")),
                        json.dumps(results)], capture_output=True, text=True, check=True)
  lines = json.loads(out.stdout.strip().splitlines()[-1])
  assert lines[0].startswith("| job | dataset: peak (+ above its start) | quantizer init: ")
  assert "20 train steps: peak" in lines[0]
  # Medians of the two repetitions: the compilation added 30 and 32 (31), the steps 100 and 116.
  assert lines[2] == ("| train float | 261 (+21) | 371 (+115) | 402 (+31) | 510 (+108) | "
                      "20 train steps | 510, 1.00 [1.00-1.00] |")
  # ESB over float per repetition: 650/500 = 1.30 and 610/520 = 1.17; median 1.24.
  assert lines[3] == ("| train esb/W4A4-k2 | 258 (+18) | 400 (+145) | 630 (+230) | "
                      "570 (+90) | train-step compile | 630, 1.24 [1.17-1.30] |")
