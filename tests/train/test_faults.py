"""Fault injection: damaged checkpoints, configs and exports, and bad inputs.

For every fault, the message is one line and nothing good is overwritten: the files of the run
(config.json, summary.json, every checkpoint) are compared byte for byte before and after.
"""

import json
import logging
import os
import shutil
import subprocess
import sys
import time

import pytest

from quantjax.export import export_workdir
from quantjax.export import format as format_lib
from quantjax.train import evaluate_workdir, train_and_evaluate
from quantjax.workdir import Workdir, manifest


def _fails(fn, match):
  with pytest.raises(ValueError, match=match) as e:
    fn()
  assert "\n" not in str(e.value), "errors must be one line"
  return str(e.value)


def _files(root: str) -> dict[str, bytes]:
  """Every file under `root` (relative path -> bytes), except the metrics and the lock."""
  out = {}
  for parent, _, names in os.walk(root):
    for name in names:
      path = os.path.join(parent, name)
      rel = os.path.relpath(path, root)
      if rel not in ("metrics.jsonl", "lock"):
        out[rel] = open(path, "rb").read()
  return out


def _largest(directory: str) -> str:
  paths = [os.path.join(p, n) for p, _, names in os.walk(directory) for n in names
           if n != manifest.MANIFEST]
  return max(paths, key=os.path.getsize)


def _garble(path: str) -> None:
  """Flips 16 bytes in the middle of the file; the size stays."""
  data = bytearray(open(path, "rb").read())
  mid = len(data) // 2
  for i in range(mid, min(mid + 16, len(data))):
    data[i] ^= 0xFF
  open(path, "wb").write(bytes(data))


def _truncate(path: str) -> None:
  with open(path, "r+b") as f:
    f.truncate(os.path.getsize(path) // 3)


# -- checkpoints ------------------------------------------------------------------------------


def test_garbled_latest_step_is_refused_by_eval_and_skipped_by_a_resume(finished_run,
                                                                        tiny_config, caplog):
  workdir = finished_run("garbled")
  step6 = os.path.join(workdir, "checkpoints", "6")
  damaged_file = _largest(step6)
  _garble(damaged_file)
  garbled = _files(workdir)
  _fails(lambda: evaluate_workdir(workdir),
         r"checkpoint .*/6 cannot be restored: .* checksum; the newest intact step is 4 "
         r"\(pass --step=4\)")
  # Rerunning the finished run changes nothing (and reads no checkpoint).
  before = json.load(open(os.path.join(workdir, "summary.json")))
  assert train_and_evaluate(tiny_config, workdir) == before
  assert _files(workdir) == garbled
  # Going on for two more steps resumes from step 4, the newest intact one; step 6 is kept.
  tiny_config.num_epochs = 8 * 32 / 3500
  summary = train_and_evaluate(tiny_config, workdir)
  assert summary["resumed_from"] == 4 and summary["step"] == 8
  kept = os.path.join(workdir, "damaged_checkpoints", "6",
                      os.path.relpath(damaged_file, step6))
  assert open(kept, "rb").read() == garbled[os.path.relpath(damaged_file, workdir)]
  warnings = [r.getMessage() for r in caplog.records if "damaged" in r.getMessage()]
  assert len(warnings) == 1 and "\n" not in warnings[0]
  assert "step 6" in warnings[0] and "using step 4" in warnings[0]


@pytest.mark.parametrize(
    ("fault", "match"),
    [
        ("truncate", r"has \d+ bytes, the manifest says \d+"),
        ("delete_file", r"is missing"),
        ("extra_file", r"stray.bin is not in the manifest"),
        ("delete_manifest", r"no manifest: its save did not finish"),
        ("garble_manifest", r"manifest.json is unreadable"),
    ],
)
def test_damaged_latest_step(finished_run, fault, match):
  workdir = finished_run(fault)
  step6 = os.path.join(workdir, "checkpoints", "6")
  if fault == "truncate":
    _truncate(_largest(step6))
  elif fault == "delete_file":
    os.remove(_largest(step6))
  elif fault == "extra_file":
    open(os.path.join(step6, "stray.bin"), "wb").write(b"x")
  elif fault == "delete_manifest":
    os.remove(os.path.join(step6, manifest.MANIFEST))
  else:
    open(os.path.join(step6, manifest.MANIFEST), "w").write("{not json")
  before = _files(workdir)
  _fails(lambda: evaluate_workdir(workdir), rf"checkpoint .*/6 cannot be restored: .*{match}")
  _fails(lambda: export_workdir(workdir), rf"checkpoint .*/6 cannot be restored: .*{match}")
  assert _files(workdir) == before


def test_every_step_damaged_is_refused_and_nothing_changes(finished_run, tiny_config):
  workdir = finished_run("all_damaged")
  for step in (2, 4, 6):
    _garble(_largest(os.path.join(workdir, "checkpoints", str(step))))
  before = _files(workdir)
  _fails(lambda: evaluate_workdir(workdir), r"/6 cannot be restored: .*no older step is intact")
  tiny_config.num_epochs = 8 * 32 / 3500
  _fails(lambda: train_and_evaluate(tiny_config, workdir), r"no older step is intact")
  assert _files(workdir) == before


def test_workdir_made_before_manifests_loads_with_a_note(finished_run, caplog):
  caplog.set_level(logging.INFO)
  workdir = finished_run("legacy")
  for step in (2, 4, 6):
    os.remove(os.path.join(workdir, "checkpoints", str(step), manifest.MANIFEST))
  result = evaluate_workdir(workdir, output=os.path.join(workdir, "..", "e.json"))
  assert result["step"] == 6
  notes = [r.getMessage() for r in caplog.records if "no manifest" in r.getMessage()]
  assert notes and all("\n" not in n for n in notes)


# -- the config record and the summary ---------------------------------------------------------


def test_missing_config_next_to_checkpoints_is_an_error(finished_run, tiny_config):
  workdir = finished_run("no_config")
  os.remove(os.path.join(workdir, "config.json"))
  before = _files(workdir)
  tiny_config.quant.weight.bits = 3
  _fails(lambda: train_and_evaluate(tiny_config, workdir),
         r"holds checkpoints but no config.json")
  _fails(lambda: evaluate_workdir(workdir), r"config.json not found")
  assert _files(workdir) == before


@pytest.mark.parametrize(
    ("name", "content", "match"),
    [
        ("config.json", '{"model": "lenet5", ', r"config.json is not valid JSON"),
        ("config.json", '["lenet5"]', r"config.json holds a JSON list, not a config"),
        ("config.json", "", r"config.json is not valid JSON"),
        ("summary.json", '{"step": 6, "accu', r"summary.json is not valid JSON"),
        ("config_amendments.json", '{"amendments": 3}', r"config_amendments.json is malformed"),
    ],
)
def test_damaged_json_is_refused(finished_run, tiny_config, name, content, match):
  workdir = finished_run(name.split(".")[0])
  open(os.path.join(workdir, name), "w").write(content)
  before = _files(workdir)
  _fails(lambda: train_and_evaluate(tiny_config, workdir), match)
  if name != "summary.json":
    _fails(lambda: evaluate_workdir(workdir), match)
  assert _files(workdir) == before


# -- exports ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def exported(finished_run, tmp_path_factory):
  """`copy()`: a fresh copy of the finished run's integer-graph export."""
  graph = export_workdir(finished_run("export"))
  source = str(tmp_path_factory.mktemp("export") / "graph")
  format_lib.save(graph, source)

  def copy():
    target = str(tmp_path_factory.mktemp("graph") / "graph")
    shutil.copytree(source, target)
    return target

  return copy


def _edit_graph(path, edit):
  graph_file = os.path.join(path, "graph.json")
  doc = json.load(open(graph_file))
  edit(doc)
  json.dump(doc, open(graph_file, "w"))


@pytest.mark.parametrize(
    ("fault", "match"),
    [
        ("garble_tensors", r"is damaged: tensors.bin does not match its checksum"),
        ("garble_graph_values", r"is damaged: graph.json (does not match|has \d+ bytes)"),
        ("truncate_graph", r"graph.json: not valid JSON"),
        ("delete_tensors", r"tensors.bin missing"),
        ("unknown_op", r"node 1 has op 'conv9'; known ops: input, conv"),
        ("missing_field", r"node 1 \(conv\) lacks 'kernel_shape'"),
        ("undefined_input", r"reads 'nowhere', which no earlier node makes"),
        ("bad_decode", r"has decode 7"),
    ],
)
def test_damaged_export_is_refused(exported, fault, match):
  path = exported()
  if fault == "garble_tensors":
    _garble(os.path.join(path, "tensors.bin"))
  elif fault == "garble_graph_values":  # still valid: a number changed
    _edit_graph(path, lambda d: d["nodes"][1].update(acc_scale=[1.0]))
  elif fault == "truncate_graph":
    _truncate(os.path.join(path, "graph.json"))
  elif fault == "delete_tensors":
    os.remove(os.path.join(path, "tensors.bin"))
  elif fault == "unknown_op":
    _edit_graph(path, lambda d: d["nodes"][1].update(op="conv9"))
  elif fault == "missing_field":
    _edit_graph(path, lambda d: d["nodes"][1].pop("kernel_shape"))
  elif fault == "undefined_input":
    _edit_graph(path, lambda d: d["nodes"][1].update({"in": "nowhere"}))
  else:
    _edit_graph(path, lambda d: d["nodes"][1].update(decode=7))
  _fails(lambda: format_lib.load(path), match)


def test_export_without_manifest_loads_and_out_file_is_refused(exported, tmp_path, caplog):
  caplog.set_level(logging.INFO)
  path = exported()
  os.remove(os.path.join(path, manifest.MANIFEST))
  graph = format_lib.load(path)
  assert any("no manifest.json" in r.getMessage() for r in caplog.records)
  (tmp_path / "out").write_text("keep me")
  _fails(lambda: format_lib.save(graph, str(tmp_path / "out")), r"'.*out' is a file")
  assert (tmp_path / "out").read_text() == "keep me"


# -- bad inputs -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value", "match"),
    [
        ("learning_rate", -3e-3, r"learning_rate=-0.003 cannot be used; valid: a number above 0"),
        ("learning_rate", 0.0, r"learning_rate=0.0 cannot be used"),
        ("learning_rate", float("nan"), r"learning_rate=nan cannot be used"),
        ("keep_checkpoints", 0, r"keep_checkpoints=0 cannot be used; valid: an integer at least"),
        ("log_every_steps", 0, r"log_every_steps=0 cannot be used"),
        ("checkpoint_every_steps", -1, r"checkpoint_every_steps=-1 cannot be used"),
        ("eval_every_epochs", -1.0, r"eval_every_epochs=-1.0 cannot be used"),
        ("warmup_epochs", -0.5, r"warmup_epochs=-0.5 cannot be used"),
        ("weight_decay", -1e-4, r"weight_decay=-0.0001 cannot be used"),
        ("momentum", 1.0, r"momentum=1.0 cannot be used; valid: \[0, 1\)"),
        ("num_devices", -1, r"num_devices=-1 cannot be used"),
        ("num_epochs", 0.0, r"num_epochs=0.0 must be positive"),
        ("batch_size", 0, r"batch_size=0 must be a positive integer"),
    ],
)
def test_nonsense_value_is_refused_before_any_work(tiny_config, tmp_path, field, value, match):
  tiny_config[field] = value
  workdir = str(tmp_path / "run")
  _fails(lambda: train_and_evaluate(tiny_config, workdir), match)
  assert not os.path.exists(workdir)


def test_workdir_that_is_a_file(tiny_config, tmp_path):
  path = tmp_path / "file"
  path.write_text("keep me")
  _fails(lambda: train_and_evaluate(tiny_config, str(path)), r"is a file, not a directory")
  _fails(lambda: evaluate_workdir(str(path)), r"is a file, not a directory")
  assert path.read_text() == "keep me"


def test_unprepared_tfds_name_without_network_fails_fast(tiny_config, tmp_path, monkeypatch):
  from quantjax.data import preparation

  monkeypatch.setattr(preparation, "_reachable", lambda address, timeout_s: False)
  tiny_config.dataset = "cifar10"
  tiny_config.model = "resnet20"
  tiny_config.data_dir = str(tmp_path / "tfds")
  start = time.perf_counter()
  _fails(lambda: train_and_evaluate(tiny_config, str(tmp_path / "run")),
         r"dataset 'cifar10' is not prepared in .*tfds, and the network is unreachable.*"
         r"tfds build cifar10 --file_format=array_record")
  assert time.perf_counter() - start < 20
  assert not os.path.exists(tmp_path / "tfds") or not os.listdir(tmp_path / "tfds")
  assert not os.path.exists(tmp_path / "run")


# -- the lock ---------------------------------------------------------------------------------


def _lock(workdir, pid, started=None):
  import socket

  with open(os.path.join(workdir, "lock"), "w") as f:
    json.dump({"pid": pid, "host": socket.gethostname(),
               "started": time.time() if started is None else started}, f)


def test_live_lock_is_refused_naming_its_holder(finished_run, tiny_config):
  workdir = finished_run("locked")
  holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
  try:
    _lock(workdir, holder.pid)
    before = _files(workdir)
    message = _fails(lambda: train_and_evaluate(tiny_config, workdir),
                     rf"is in use by pid {holder.pid} on .*, started \d{{4}}-\d\d-\d\d ")
    assert "lock" in message
    assert _files(workdir) == before
  finally:
    holder.kill()
    holder.wait()


def test_stale_lock_is_taken_over_with_a_message(finished_run, tiny_config, caplog):
  workdir = finished_run("stale")
  gone = subprocess.Popen([sys.executable, "-c", "pass"])
  gone.wait()
  _lock(workdir, gone.pid, started=time.time() - 60)
  train_and_evaluate(tiny_config, workdir)  # finished: returns at once
  messages = [r.getMessage() for r in caplog.records if "stale lock" in r.getMessage()]
  assert len(messages) == 1 and f"pid {gone.pid}" in messages[0]
  assert not os.path.exists(os.path.join(workdir, "lock"))


def test_unreadable_lock(finished_run, tiny_config):
  workdir = finished_run("bad_lock")
  open(os.path.join(workdir, "lock"), "w").write("{garbage")
  _fails(lambda: train_and_evaluate(tiny_config, workdir), r"lock file .* is unreadable")


def test_workdir_class_paths(tmp_path):
  wd = Workdir(str(tmp_path / "w"))
  expected = str(tmp_path / "w" / "eval_test_int_acc16_6.json")
  assert wd.eval_file("test", "int", 6, "acc16") == expected
  assert not wd.has_checkpoints() and not os.path.exists(wd.path)  # reading creates nothing
  with pytest.raises(ValueError, match="not a path"):
    Workdir("")
