"""How far the host may run ahead of the devices: a few training steps in flight, no more.

JAX dispatches asynchronously: `train_step(state, batch)` returns at once, and a loop that reads
nothing back would queue steps without bound. XLA's CPU client admits at most 32 computations in
flight per device (`max_inflight_computations_per_device`, which JAX does not expose); the next
launch waits for a slot, and for a computation over several devices it waits *inside a thread of
the client's pool*. That pool has max(cores, devices) threads, exactly what one collective needs
to run all its per-device parts at once on a machine with no more cores than (fake) devices. So
one launch parked on a full device takes the thread that the running all-reduce's last part
needs, that part never starts, and the rendezvous aborts the process after 40 s ("Termination
timeout for `all reduce ...`"). The default config hit this on 2 or 4 fake CPU devices: the loop
reads metrics back only every `log_every_steps` (50), and the device input pipeline adds its
batch programs on top, so device 0 went past 32 within a log interval.

The cause is the unbounded queue, so the loop bounds it: after dispatching step s it waits for
step s - `MAX_STEPS_IN_FLIGHT` to finish. That is not a sync per step: the devices always hold the
next steps' work, and the host waits only when it is that far ahead. Per device that keeps at
most `MAX_STEPS_IN_FLIGHT` steps, their batches and the prefetcher's few ready batches in flight,
about 12 computations, well under 32, on any backend and any number of devices or processes.
"""

from __future__ import annotations

import collections
from typing import Any

import jax

MAX_STEPS_IN_FLIGHT = 4


class StepWindow:
  """The last few steps' outputs; admitting one more waits for the oldest beyond the window."""

  def __init__(self, depth: int = MAX_STEPS_IN_FLIGHT):
    if depth < 1:
      raise ValueError(f"depth={depth} must be at least 1")
    self._depth = depth
    self._outputs: collections.deque = collections.deque()

  def admit(self, outputs: Any) -> None:
    """Records a dispatched step's outputs (any pytree of arrays it returned); blocks until the
    step `depth` steps before it has finished."""
    self._outputs.append(outputs)
    while len(self._outputs) > self._depth:
      jax.block_until_ready(self._outputs.popleft())

  def __len__(self) -> int:
    """Steps admitted and not yet waited for (at most `depth`)."""
    return len(self._outputs)
