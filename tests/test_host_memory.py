"""`quantjax.host_memory`: freed heap pages go back to the OS, after each large compile."""

import ctypes
import ctypes.util

import jax
import jax.numpy as jnp
import pytest

from quantjax import host_memory


def _rss_mib() -> float:
  with open("/proc/self/status") as f:
    return next(int(line.split()[1]) / 1024 for line in f if line.startswith("VmRSS"))


@pytest.fixture
def releases(monkeypatch):
  """The calls of `release` (counted, not made)."""
  calls = []
  monkeypatch.setattr(host_memory, "release", lambda: calls.append(1) or True)
  return calls


def _compile_something_new(k: float) -> None:
  jax.jit(lambda x: jnp.sin(x) * k + jnp.cos(x * k)).lower(jnp.ones(7)).compile()


def test_a_compile_inside_is_followed_by_a_release_and_outside_is_not(releases, monkeypatch):
  monkeypatch.setattr(host_memory, "MIN_COMPILE_SECONDS", 0.0)
  _compile_something_new(1.5)
  assert not releases  # not active
  with host_memory.released_after_compiles():
    _compile_something_new(2.5)
    assert len(releases) == 1  # jax's compile event reached the listener
    with host_memory.released_after_compiles():  # nested: still active after the inner one
      pass
    assert len(releases) == 2  # the inner one's release at its end
    _compile_something_new(3.5)
    assert len(releases) == 3
  assert len(releases) == 4  # and one at the end
  _compile_something_new(4.5)
  assert len(releases) == 4


def test_compiles_below_the_threshold_are_not_followed(releases, monkeypatch):
  monkeypatch.setattr(host_memory, "MIN_COMPILE_SECONDS", 1e9)

  @host_memory.released_after_compiles()  # the entry points' form
  def job():
    _compile_something_new(5.5)
    return len(releases)

  assert job() == 0
  assert len(releases) == 1  # the release at the end


@pytest.mark.skipif(host_memory._malloc_trim() is None, reason="the C library has no malloc_trim")
def test_release_returns_freed_heap_pages_to_the_os():
  libc = ctypes.CDLL(ctypes.util.find_library("c"))
  libc.malloc.restype = ctypes.c_void_p
  libc.free.argtypes = [ctypes.c_void_p]
  size, count = 64 * 1024, 2048  # 128 MiB in blocks below glibc's mmap threshold: the heap
  blocks = [libc.malloc(size) for _ in range(count)]
  keep = libc.malloc(size)  # above the freed blocks: the heap's top cannot shrink on its own
  for b in blocks:
    ctypes.memset(b, 1, size)  # resident
  for b in blocks:
    libc.free(b)
  before = _rss_mib()
  assert host_memory.release()
  after = _rss_mib()
  libc.free(keep)
  assert before - after > 96, (before, after)
