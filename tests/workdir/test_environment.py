"""What a run's numbers depend on: recorded per start or resume, and what changed named."""

import json
import os

import jax
import pytest

from quantjax.workdir import Workdir, environment


def test_current_names_software_devices_processes_and_cores():
  env = environment.current(mesh_devices=2)
  assert env["jax"] == jax.__version__ and env["backend"] == "cpu"
  assert (env["device_count"], env["mesh_devices"], env["process_count"]) == (4, 2, 1)
  assert env["visible_cores"] == len(os.sched_getaffinity(0))
  assert "--xla_force_host_platform_device_count=4" in env["xla_flags"]
  json.dumps(env)  # plain JSON


def test_differences_ignore_where_and_when():
  old = environment.current(4)
  assert environment.differences(old, {**old, "host": "elsewhere", "date": "tomorrow"}) == []
  assert environment.differences(old, {**old, "visible_cores": 64, "jaxlib": "9.9"}) == [
      ("jaxlib", old["jaxlib"], "9.9"), ("visible_cores", old["visible_cores"], 64)]


def test_a_resume_appends_its_environment_and_says_what_changed(tmp_path):
  wd = Workdir(str(tmp_path))
  first = environment.current(4)
  assert wd.record_environment(first, 0) == []
  assert wd.record_environment({**first, "date": "later"}, 4) == []  # the same machine
  moved = {**first, "visible_cores": first["visible_cores"] + 1}
  assert wd.record_environment(moved, 8) == [
      ("visible_cores", first["visible_cores"], first["visible_cores"] + 1)]
  assert [e["step"] for e in wd.environments()] == [0, 4, 8]
  # A resume from step 4 (step 8 lost) replaces what was recorded from 4 on.
  wd.record_environment(first, 4)
  assert [e["step"] for e in wd.environments()] == [0, 4]


def test_a_process_that_does_not_write_cannot_write(tmp_path):
  Workdir(str(tmp_path)).create()
  reader = Workdir(str(tmp_path), writer=False)
  for write in (reader.create, lambda: reader.write_summary({}),
                lambda: reader.record_environment({}, 0), lambda: reader.truncate_metrics(0),
                lambda: reader.write_json("x.json", {})):
    with pytest.raises(RuntimeError, match="does not write"):
      write()
  assert os.listdir(tmp_path) == []
  assert reader.environments() == [] and reader.read_summary() is None  # reading is fine
