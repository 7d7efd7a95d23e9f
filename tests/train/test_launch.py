"""The local launcher: each process's environment and arguments, and ending a run that failed."""

import json
import os
import subprocess
import sys
import time

from quantjax.train import launch


def test_environment_uses_the_loopback_and_sets_the_device_count():
  base = {"XLA_FLAGS": "--xla_force_host_platform_device_count=4 --xla_cpu_foo=1", "A": "b"}
  env = launch.process_env(1, 2, 12345, 3, base=base)
  assert env["JAX_COORDINATOR_ADDRESS"] == "127.0.0.1:12345"
  assert env["JAX_COORDINATOR_BIND_ADDRESS"] == "127.0.0.1:12345"  # not every interface
  assert (env["JAX_NUM_PROCESSES"], env["JAX_PROCESS_ID"], env["A"]) == ("2", "1", "b")
  assert env["XLA_FLAGS"] == "--xla_cpu_foo=1 --xla_force_host_platform_device_count=3"
  assert launch.process_env(0, 1, 1, 0, base=base)["XLA_FLAGS"] == base["XLA_FLAGS"]
  assert "JAX_PROCESS_ID" not in os.environ  # the caller's environment is untouched


def test_each_process_gets_the_arguments_its_id_and_one_port(tmp_path):
  show = ("import json, os, sys; print(json.dumps([sys.argv[1:], os.environ['JAX_PROCESS_ID'], "
          "os.environ['JAX_COORDINATOR_ADDRESS']]))")
  procs = launch.start(["--config=c.py", "--workdir=w"], 3, heartbeat_timeout_s=7,
                       log_dir=str(tmp_path), command=[sys.executable, "-c", show])
  assert launch.wait(procs, grace_s=5) == 0
  seen = [json.loads(open(tmp_path / f"process_{i}.log").read()) for i in range(3)]
  assert [s[1] for s in seen] == ["0", "1", "2"]
  assert all(s[0] == ["--distributed", "--heartbeat_timeout_s=7", "--config=c.py", "--workdir=w"]
             for s in seen)
  assert len({s[2] for s in seen}) == 1 and seen[0][2].startswith("127.0.0.1:")


def test_a_failure_ends_the_others_after_the_grace_period():
  procs = [subprocess.Popen([sys.executable, "-c", code], start_new_session=True) for code in (
      "import sys; sys.exit(3)", "import time; time.sleep(120)")]
  start = time.monotonic()
  try:
    assert launch.wait(procs, grace_s=1.0) == 3
  finally:
    launch.stop(procs)
  assert time.monotonic() - start < 15
  assert procs[1].returncode < 0  # ended by the launcher's signal
