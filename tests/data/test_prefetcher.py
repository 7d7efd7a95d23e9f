"""prefetch: order, `put` in the background thread, errors reach the consumer, clean stop."""

import itertools
import threading
import time

import pytest

from quantjax.data import prefetch


def test_order_and_put_runs_in_the_background_thread():
  threads = set()

  def put(x):
    threads.add(threading.current_thread().name)
    return x * 10

  assert list(prefetch(iter(range(7)), size=2, put=put)) == [0, 10, 20, 30, 40, 50, 60]
  assert threads == {"quantjax-prefetch"}


def test_runs_ahead_by_size():
  produced = []

  def counting():
    for i in itertools.count():
      produced.append(i)
      yield i

  it = prefetch(counting(), size=3)
  assert next(it) == 0
  time.sleep(0.3)
  # Three ready in the queue plus one waiting to get in.
  assert len(produced) == 5
  it.close()


@pytest.mark.parametrize("where", ["iterator", "put"])
def test_errors_reach_the_consumer_after_earlier_items(where):
  def items():
    yield from range(3)
    if where == "iterator":
      raise RuntimeError("reader broke")
    yield 3

  def put(x):
    if where == "put" and x == 3:
      raise RuntimeError("transfer broke")
    return x

  it = prefetch(items(), put=put)
  assert [next(it) for _ in range(3)] == [0, 1, 2]
  with pytest.raises(RuntimeError, match="broke"):
    next(it)


def test_exception_objects_are_items_not_errors():
  error = ValueError("just data")
  assert list(prefetch(iter([error, 1]))) == [error, 1]


def test_closing_stops_the_producer():
  produced = []

  def endless():
    for i in itertools.count():
      produced.append(i)
      yield i

  before = set(threading.enumerate())
  it = prefetch(endless(), size=2)
  assert [next(it) for _ in range(5)] == list(range(5))
  (thread,) = [t for t in threading.enumerate() if t not in before]
  assert thread.name == "quantjax-prefetch"
  it.close()
  thread.join(timeout=1.0)  # the producer polls every 0.1 s
  assert not thread.is_alive()
  assert len(produced) <= 5 + 2 + 1  # consumed, queued, in hand


def test_size_must_be_positive():
  with pytest.raises(ValueError, match="size=0"):
    prefetch(iter([]), size=0)
