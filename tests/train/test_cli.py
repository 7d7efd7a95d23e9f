"""train.py on bad input: exit status 1 and one line, no traceback, nothing written."""

import os
import subprocess
import sys

import pytest

_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--config=configs/nope.py"],
         "error: cannot load --config: [Errno 2] No such file or directory: 'configs/nope.py'"),
        (["--config=configs/test.py", "--config.learning_rat=0.1"],
         "error: --config.learning_rat: config has no field 'learning_rat'; valid fields: "),
    ],
)
def test_bad_command_line_is_one_line(args, expected, tmp_path):
  workdir = tmp_path / "run"
  proc = subprocess.run([sys.executable, "train.py", f"--workdir={workdir}", *args], cwd=_ROOT,
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode == 1
  assert "Traceback" not in proc.stderr
  last = proc.stderr.strip().splitlines()[-1]
  assert last.startswith(expected), proc.stderr[-2000:]
  assert not workdir.exists()
