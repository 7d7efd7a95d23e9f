"""Progress bars and ETAs: one mechanism for training, evaluation, the searches, export, sweeps.

A bar (tqdm) is drawn on stderr only when stderr is a terminal; otherwise it is silent and the
caller's log lines (one per interval) carry the progress, with durations written by
`format_duration` as h:mm:ss (36,000 s is '10:00:00', not '3.6e+04').
"""

from __future__ import annotations

import math
import sys
from collections.abc import Iterable
from typing import IO, Any

from tqdm import tqdm

# Elapsed and remaining time as h:mm:ss (tqdm's own `{remaining}` drops the hours below one).
_BAR_FORMAT = ("{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed_hms}<{eta_hms}, {rate_fmt}"
               "{postfix}]")


def format_duration(seconds: float | None) -> str:
  """h:mm:ss of a duration in seconds; '?' for an unknown (None, NaN or infinite) one.

  Args:
    seconds: the duration; rounded to the nearest second, negatives count as 0.

  Returns:
    e.g. '10:00:00' for 36000, '0:01:05' for 65.4, '26:00:00' for 93600 (hours do not wrap).
  """
  if seconds is None or not math.isfinite(seconds):
    return "?"
  total = max(int(round(seconds)), 0)
  hours, rest = divmod(total, 3600)
  minutes, secs = divmod(rest, 60)
  return f"{hours}:{minutes:02d}:{secs:02d}"


def is_terminal(stream: IO | None = None) -> bool:
  """Whether `stream` (default stderr) is attached to a terminal."""
  stream = sys.stderr if stream is None else stream
  isatty = getattr(stream, "isatty", None)
  try:
    return bool(isatty and isatty())
  except ValueError:  # a closed stream
    return False


class _Bar(tqdm):
  """tqdm whose bar shows elapsed and remaining time as h:mm:ss."""

  @property
  def format_dict(self):
    d = super().format_dict
    n, total, rate = d.get("n") or 0, d.get("total"), d.get("rate")
    if rate is None and d.get("elapsed") and n > d.get("initial", 0):
      rate = (n - d.get("initial", 0)) / d["elapsed"]
    eta = (total - n) / rate if total is not None and rate else None
    return {**d, "elapsed_hms": format_duration(d.get("elapsed")),
            "eta_hms": format_duration(eta)}


def bar(iterable: Iterable | None = None, *, total: float | None = None, desc: str = "",
        unit: str = "it", initial: int = 0, leave: bool = True, enabled: bool = True,
        stream: IO | None = None, **kwargs: Any) -> tqdm:
  """A progress bar on `stream` (default stderr), disabled when it is not a terminal.

  Use it as tqdm: iterate over it, or call `update(n)` and `close()` (or use `with`).

  Args:
    iterable: what to iterate over, or None to update by hand.
    total: the number of units when it ends (default: `len(iterable)` where defined).
    desc: a short label before the bar.
    unit: what one unit is ('step', 'batch', 'run').
    initial: units already done (a resumed run's start step).
    leave: keep the finished bar on screen.
    enabled: False silences it everywhere (hosts other than the first).
    stream: where to draw; None = sys.stderr, read at the call so captured stderr is honoured.
    **kwargs: further tqdm arguments.

  Returns:
    The bar (a tqdm instance; a no-op one when the stream is not a terminal).
  """
  stream = sys.stderr if stream is None else stream
  return _Bar(iterable, total=total, desc=desc, unit=unit, initial=initial, leave=leave,
              file=stream, disable=not (enabled and is_terminal(stream)), bar_format=_BAR_FORMAT,
              dynamic_ncols=True, **kwargs)


def write(message: str, stream: IO | None = None) -> None:
  """Prints `message` on its own line (flushed) without breaking a bar being drawn.

  Args:
    message: the line.
    stream: where to print it; None = sys.stderr (the bars' stream).
  """
  stream = sys.stderr if stream is None else stream
  tqdm.write(message, file=stream)
  stream.flush()
