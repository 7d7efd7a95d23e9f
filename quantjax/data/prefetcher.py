"""Prefetching: produce batches (and move them to devices) in a background thread."""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator
from typing import Any

_POLL_S = 0.1  # how often a producer blocked on a full queue checks whether to stop


def prefetch(iterator: Iterator, size: int = 2, put: Callable[[Any], Any] | None = None
             ) -> Iterator:
  """Runs `iterator`, and `put` on each item, up to `size` items ahead in a daemon thread.

  The thread starts on the first `next`. An exception raised by `iterator` or `put` is raised
  to the consumer, in order, after the items produced before it. Closing the returned iterator
  (or dropping it) stops the thread.

  Args:
    iterator: the items, e.g. `Dataset.train_batches(...)`.
    size: how many items may wait, ready, in the queue.
    put: applied to each item in the thread, e.g. `lambda b: jax.device_put(b, sharding)`.

  Returns:
    An iterator over `put(item)` (or `item`) in the order of `iterator`.
  """
  if size < 1:
    raise ValueError(f"size={size} must be at least 1")
  return _prefetch(iterator, size, put)


def _prefetch(iterator: Iterator, size: int, put: Callable[[Any], Any] | None) -> Iterator:
  # Entries are (kind, payload) so that an item that happens to be an exception is yielded.
  ready: queue.Queue = queue.Queue(maxsize=size)
  stop = threading.Event()

  def offer(entry: tuple[str, Any]) -> bool:
    while not stop.is_set():
      try:
        ready.put(entry, timeout=_POLL_S)
        return True
      except queue.Full:
        pass
    return False

  def produce() -> None:
    try:
      for item in iterator:
        if not offer(("item", put(item) if put is not None else item)):
          return
    except BaseException as error:  # noqa: BLE001  raised again in the consumer
      offer(("error", error))
    else:
      offer(("end", None))

  threading.Thread(target=produce, name="quantjax-prefetch", daemon=True).start()
  try:
    while True:
      kind, payload = ready.get()
      if kind == "end":
        return
      if kind == "error":
        raise payload
      yield payload
  finally:
    stop.set()
