"""The shared progress mechanism: h:mm:ss durations, bars only on a terminal, log lines."""

import io
import logging
import math

import pytest

from quantjax.reports import progress
from quantjax.train.metrics import MetricWriter, format_scalars


class _Terminal(io.StringIO):
  """A stream that says it is a terminal."""

  def isatty(self):
    return True


@pytest.mark.parametrize("seconds, text", [
    (36000, "10:00:00"),  # what `.4g` printed as 3.6e+04
    (0, "0:00:00"),
    (65.4, "0:01:05"),
    (3599.6, "1:00:00"),  # rounded to the second
    (93600, "26:00:00"),  # hours do not wrap into days
    (-3, "0:00:00"),
    (math.inf, "?"),
    (math.nan, "?"),
    (None, "?"),
])
def test_format_duration(seconds, text):
  assert progress.format_duration(seconds) == text


def test_bar_is_silent_when_stderr_is_not_a_terminal(capsys):
  for _ in progress.bar(range(5), desc="train", unit="step"):
    pass
  with progress.bar(total=3, desc="eval") as b:
    b.update(3)
  captured = capsys.readouterr()
  assert captured.err == ""
  assert captured.out == ""


def test_bar_draws_h_mm_ss_on_a_terminal():
  stream = _Terminal()
  b = progress.bar(total=36001, desc="train", unit="step", stream=stream, smoothing=0)
  b._time = lambda: b.start_t + 1.0  # one step in exactly one second: 36,000 s left
  b.update(1)
  assert b.format_dict["eta_hms"] == "10:00:00"
  b.close()
  last = stream.getvalue().rstrip("\n").split("\r")[-1]
  assert last.startswith("train:")
  assert "1/36001 [0:00:01<10:00:00" in last


def test_bar_disabled_on_other_hosts_even_on_a_terminal():
  stream = _Terminal()
  with progress.bar(total=2, stream=stream, enabled=False) as b:
    b.update(2)
  assert stream.getvalue() == ""


def test_log_line_carries_eta_as_h_mm_ss(tmp_path, caplog):
  assert format_scalars({"train/loss": 0.123456, "train/steps_per_sec": 12.5,
                         "train/eta_sec": 36000.0}) == (
      "train/loss=0.1235, train/steps_per_sec=12.5, train/eta=10:00:00")
  writer = MetricWriter(None, enabled=False)  # logs only
  with caplog.at_level(logging.INFO, logger="absl"):
    writer.write(7, {"loss": 0.5, "eta_sec": 3723.0}, prefix="train/")
  lines = [r.getMessage() for r in caplog.records]
  assert lines == ["step 7: train/loss=0.5, train/eta=1:02:03"]
  assert "e+" not in lines[0]
