"""SIGTERM and SIGINT as a request to stop: the loop saves the current step, then `Preempted`.

Cluster schedulers send SIGTERM before they preempt a job, and Ctrl-C sends SIGINT. While a
`StopOnSignal` is active, either signal only sets a flag that the training loop reads after each
step; a second signal of either kind gets the default behaviour back (an immediate stop).
Handlers can only be installed from the main thread; elsewhere the signals keep their defaults.
"""

from __future__ import annotations

import signal
import threading

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Preempted(Exception):  # noqa: N818  the name says what happened to the run
  """The run was stopped by a signal after saving a checkpoint; rerun to resume."""

  def __init__(self, message: str, signum: int):
    super().__init__(message)
    self.signum = signum


class StopOnSignal:
  """Context manager: `.signum` is the first SIGTERM/SIGINT received inside it, else None."""

  def __init__(self):
    self.signum: int | None = None
    self._previous: dict[int, object] = {}

  @property
  def name(self) -> str:
    return signal.Signals(self.signum).name if self.signum else ""

  def _handle(self, signum, frame) -> None:
    del frame
    self.signum = signum
    self._restore()  # a second signal stops at once

  def _restore(self) -> None:
    for signum, handler in self._previous.items():
      signal.signal(signum, handler)
    self._previous.clear()

  def __enter__(self) -> StopOnSignal:
    if threading.current_thread() is threading.main_thread():
      for signum in SIGNALS:
        self._previous[signum] = signal.signal(signum, self._handle)
    return self

  def __exit__(self, *exc) -> None:
    self._restore()
