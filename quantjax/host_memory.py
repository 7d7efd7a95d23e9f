"""Giving compilation's freed memory back to the operating system after each large compile.

XLA's CPU compiler builds a program's fusions in memory it frees once the program is built
(LLVM and MLIR modules: 100-230 MiB for a LeNet-5 training step), but glibc's
allocator keeps freed pages in its arenas, so a process's resident set only grows: every later
phase of a job (the next compilation, the training steps' buffers) stacks on memory nothing
uses. `malloc_trim(0)` hands the free pages of every arena back. Measured on LeNet-5 (2 cores,
`bench/memory.py`): it lowered every training job's peak by 15-17 %, float's and the quantized
ones' alike (`results/memory_xeon.md`).

`released_after_compiles()` does that after every backend compilation that took at least
`MIN_COMPILE_SECONDS` while it is active: the training loop, the evaluations, the integer
emulator and the post-training searches run inside it. Where the C library has no
`malloc_trim` (macOS, musl) it does nothing.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools
import threading
from collections.abc import Callable, Iterator

from jax import monitoring

# jax's event: the backend compile of one program (a persistent-cache hit included).
COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"
# Eager ops compile in milliseconds and free next to nothing; a trim after each would only cost.
MIN_COMPILE_SECONDS = 0.2

_lock = threading.Lock()
_active = 0  # nesting depth of `released_after_compiles`
_registered = False


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
  """glibc's `malloc_trim`, or None where the C library has none."""
  name = ctypes.util.find_library("c")
  try:
    return ctypes.CDLL(name).malloc_trim if name else None
  except (OSError, AttributeError):
    return None


def release() -> bool:
  """Returns the allocator's free pages to the OS; whether the C library could (glibc)."""
  trim = _malloc_trim()
  if trim is None:
    return False
  trim(0)
  return True


def _on_event(event: str, duration: float, **_) -> None:
  if _active and event == COMPILE_EVENT and duration >= MIN_COMPILE_SECONDS:
    release()


@contextlib.contextmanager
def released_after_compiles() -> Iterator[None]:
  """While active (nesting allowed), `release()` follows every compile of at least
  `MIN_COMPILE_SECONDS`; once at the end as well."""
  global _active, _registered
  with _lock:
    if not _registered:  # jax has no way to remove a listener: one, switched by `_active`
      monitoring.register_event_duration_secs_listener(_on_event)
      _registered = True
    _active += 1
  try:
    yield
  finally:
    with _lock:
      _active -= 1
    release()
