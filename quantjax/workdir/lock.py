"""One writer per workdir: a lock file naming its holder (pid, host, start time).

The lock is `<workdir>/lock`, created complete in one step (written to a temporary file, then
hard-linked into place, which fails if the lock exists), so a reader never sees half of it. A
second process gets a one-line error naming the holder. A lock whose process is gone (same host,
pid not running, or running but started after the lock was taken, i.e. a reused pid) is stale:
it is taken over, with a log line saying whose it was.
"""

from __future__ import annotations

import datetime
import json
import os
import socket
import time

from absl import logging

LOCK_FILE = "lock"
_held: set[str] = set()  # lock paths this process holds


def _describe(holder: dict) -> str:
  started = holder.get("started")
  when = (datetime.datetime.fromtimestamp(started, datetime.timezone.utc).strftime(
      "%Y-%m-%d %H:%M:%S UTC") if isinstance(started, (int, float)) else "an unknown time")
  return f"pid {holder.get('pid')} on {holder.get('host')}, started {when}"


def _process_start(pid: int) -> float | None:
  """The start time (epoch seconds) of a running `pid` on Linux; None when unknown."""
  try:
    with open(f"/proc/{pid}/stat") as f:
      fields = f.read().rsplit(")", 1)[1].split()
    with open("/proc/stat") as f:
      boot = next(float(line.split()[1]) for line in f if line.startswith("btime"))
    return boot + int(fields[19]) / os.sysconf("SC_CLK_TCK")
  except (OSError, IndexError, ValueError, StopIteration):
    return None


def _is_alive(holder: dict, path: str) -> bool:
  """Whether the holder may still be running (True whenever this host cannot tell)."""
  if holder.get("host") != socket.gethostname():
    return True
  pid = holder.get("pid")
  if not isinstance(pid, int) or pid <= 0:
    return False
  if pid == os.getpid():  # this process: held, or left by an earlier run that did not finish
    return path in _held
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    pass  # alive, another user's
  start = _process_start(pid)
  started = holder.get("started")
  # A pid reused by a process that started after the lock was taken is not the holder.
  return not (start is not None and isinstance(started, (int, float)) and start > started + 2)


class Lock:
  """`with Lock(workdir):` holds the workdir's lock; raises ValueError if another process does."""

  def __init__(self, directory: str):
    self.path = os.path.join(directory, LOCK_FILE)

  def __enter__(self) -> Lock:
    self.acquire()
    return self

  def __exit__(self, *exc) -> None:
    self.release()

  def acquire(self) -> None:
    me = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time()}
    tmp = f"{self.path}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
      json.dump(me, f)
    try:
      for _ in range(3):
        try:
          os.link(tmp, self.path)
          _held.add(self.path)
          return
        except FileExistsError:
          holder = self._holder()
          if not holder:
            continue  # released meanwhile
          if _is_alive(holder, self.path):
            raise ValueError(f"workdir {os.path.dirname(self.path)!r} is in use by "
                             f"{_describe(holder)} (lock {self.path}); wait for it, or delete "
                             "the lock if that process is gone") from None
          logging.warning("taking over the stale lock of %s (that process is gone)",
                          _describe(holder))
          try:
            os.remove(self.path)
          except FileNotFoundError:
            pass
      raise ValueError(f"could not take the lock {self.path}: other processes keep taking it")
    finally:
      os.remove(tmp)

  def _holder(self) -> dict:
    try:
      with open(self.path) as f:
        holder = json.load(f)
      if isinstance(holder, dict):
        return holder
    except FileNotFoundError:
      return {}  # released meanwhile: not alive, the next attempt takes it
    except (OSError, ValueError):
      pass
    raise ValueError(f"lock file {self.path} is unreadable; delete it if no process uses the "
                     "workdir")

  def release(self) -> None:
    if self.path in _held:
      _held.discard(self.path)
      try:
        os.remove(self.path)
      except FileNotFoundError:
        pass
