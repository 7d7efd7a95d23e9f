"""Runs one training run as N processes on this machine: the multi-host path, tried locally.

  python -m quantjax.train.launch --num_processes=2 --devices_per_process=2 -- \\
      --config=configs/default.py --workdir=runs/two_processes

Every process runs `train.py --distributed <the arguments after -->` with
JAX_COORDINATOR_ADDRESS=127.0.0.1:<a free port> (process 0 runs the coordinator, listening on the
loopback only), JAX_NUM_PROCESSES and JAX_PROCESS_ID; `--devices_per_process=D` gives each D fake
CPU devices (XLA_FLAGS), so the run's mesh has N·D devices, as N hosts of D accelerators would.
Collectives between the processes go over gloo, by TCP to the address this machine's host name
resolves to (127.0.0.1 where /etc/hosts says so). The result is the same as one process with N·D
devices, up to the order of the gradient sum (see the README).

SIGINT and SIGTERM are passed on to every process: they agree on the step, save it and stop, and
the same command resumes. If a process fails or is killed, the others stop by themselves within
the heartbeat timeout (JAX's coordinator notices the silence); the launcher waits that long, then
ends whatever is left, and exits with the first failure's status.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence

from absl import app, flags

_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TRAIN_PY = os.path.join(_ROOT, "train.py")
_DEVICE_COUNT_FLAG = "--xla_force_host_platform_device_count"
_TERMINATE_S = 10.0  # from SIGTERM to SIGKILL for a process that outlives the others
_POLL_S = 0.2

def free_port() -> int:
  """A TCP port on 127.0.0.1 that nothing listens on now."""
  with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def process_env(index: int, count: int, port: int, devices_per_process: int = 0,
                base: dict[str, str] | None = None) -> dict[str, str]:
  """The environment of process `index` of `count`, coordinated on 127.0.0.1:`port`."""
  env = dict(os.environ if base is None else base)
  env.update({
      "JAX_COORDINATOR_ADDRESS": f"127.0.0.1:{port}",
      "JAX_COORDINATOR_BIND_ADDRESS": f"127.0.0.1:{port}",  # not every interface
      "JAX_NUM_PROCESSES": str(count),
      "JAX_PROCESS_ID": str(index),
  })
  if devices_per_process:
    kept = [f for f in env.get("XLA_FLAGS", "").split() if not f.startswith(_DEVICE_COUNT_FLAG)]
    env["XLA_FLAGS"] = " ".join([*kept, f"{_DEVICE_COUNT_FLAG}={devices_per_process}"])
  return env


def start(train_args: Sequence[str], num_processes: int, *, devices_per_process: int = 0,
          heartbeat_timeout_s: int = 30, log_dir: str = "",
          command: Sequence[str] | None = None,
          env: dict[str, str] | None = None) -> list[subprocess.Popen]:
  """Starts the processes, each in its own process group (so that `stop` ends its children too).

  Args:
    train_args: train.py's arguments (`--distributed` and the heartbeat are added).
    num_processes: how many.
    devices_per_process: fake CPU devices each; 0 = XLA_FLAGS unchanged.
    heartbeat_timeout_s: train.py's --heartbeat_timeout_s.
    log_dir: process i writes <log_dir>/process_<i>.log; '' = inherit this process's output.
    command: what runs instead of `python train.py` (a test's driver); the arguments follow.
    env: variables added to this process's environment for every process.
  """
  port = free_port()
  command = list(command or [sys.executable, TRAIN_PY])
  args = [*command, "--distributed", f"--heartbeat_timeout_s={heartbeat_timeout_s}",
          *train_args]
  if log_dir:
    os.makedirs(log_dir, exist_ok=True)
  procs = []
  for i in range(num_processes):
    out = open(os.path.join(log_dir, f"process_{i}.log"), "w") if log_dir else None  # noqa: SIM115
    procs.append(subprocess.Popen(
        args, cwd=_ROOT,
        env=process_env(i, num_processes, port, devices_per_process, {**os.environ, **(env or {})}),
        stdout=out, stderr=subprocess.STDOUT if out else None, start_new_session=True))
    if out:
      out.close()  # the child holds its own descriptor
  return procs


def stop(procs: Sequence[subprocess.Popen], timeout_s: float = _TERMINATE_S) -> None:
  """SIGTERM to each live process's group, SIGKILL after `timeout_s`; waits for them."""
  for sig in (signal.SIGTERM, signal.SIGKILL):
    for p in procs:
      if p.poll() is None:
        try:
          os.killpg(p.pid, sig)
        except ProcessLookupError:
          pass
    deadline = time.monotonic() + timeout_s
    while any(p.poll() is None for p in procs) and time.monotonic() < deadline:
      time.sleep(_POLL_S)
  for p in procs:
    p.wait()


def wait(procs: Sequence[subprocess.Popen], *, grace_s: float) -> int:
  """Waits for every process; after the first failure, at most `grace_s` more, then `stop`.

  Returns:
    0, or the first failure's status (128 + N for a process ended by signal N).
  """
  first_failure, failed_at = 0, None
  while True:
    for i, p in enumerate(procs):
      status = p.poll()
      if status and not first_failure:
        first_failure = 128 - status if status < 0 else status
        failed_at = time.monotonic()
        how = signal.Signals(-status).name if status < 0 else f"status {status}"
        print(f"launch: process {i} ended with {how}; the others stop within the heartbeat "
              f"timeout ({grace_s:.0f} s)", file=sys.stderr, flush=True)
    if all(p.poll() is not None for p in procs):
      return first_failure
    if failed_at is not None and time.monotonic() - failed_at > grace_s:
      print("launch: ending the processes still running", file=sys.stderr, flush=True)
      stop(procs)
      return first_failure
    time.sleep(_POLL_S)


def _define_flags() -> dict[str, flags.FlagHolder]:
  """The launcher's flags (defined only when it runs: train.py's share the flag registry)."""
  return {
      "num_processes": flags.DEFINE_integer("num_processes", 2, "Processes to start."),
      "devices_per_process": flags.DEFINE_integer(
          "devices_per_process", 0,
          "Fake CPU devices per process (XLA_FLAGS); 0 = as XLA_FLAGS and the machine have it."),
      "heartbeat_timeout_s": flags.DEFINE_integer(
          "heartbeat_timeout_s", 30,
          "A process silent for this long is declared dead and the others stop (train.py's "
          "flag)."),
      "process_logs": flags.DEFINE_string(
          "process_logs", "",
          "Write process i's output to <process_logs>/process_<i>.log; '' = this terminal."),
  }


def main(argv: list[str], options: dict[str, flags.FlagHolder]) -> None:
  heartbeat_s = options["heartbeat_timeout_s"].value
  procs = start(argv[1:], options["num_processes"].value,
                devices_per_process=options["devices_per_process"].value,
                heartbeat_timeout_s=heartbeat_s, log_dir=options["process_logs"].value)

  def forward(signum, frame):
    del frame
    for p in procs:
      if p.poll() is None:
        p.send_signal(signum)

  signal.signal(signal.SIGINT, forward)
  signal.signal(signal.SIGTERM, forward)
  try:
    status = wait(procs, grace_s=heartbeat_s + 30)
  finally:
    stop(procs)
  sys.exit(status)


if __name__ == "__main__":
  _options = _define_flags()
  app.run(lambda argv: main(argv, _options))
