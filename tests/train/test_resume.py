"""Honest resumes: config.json is the record; changes are refused or recorded as amendments."""

import datetime
import json
import logging
import os

from quantjax.train import train_and_evaluate
from quantjax.workdir import Workdir, manifest
from tests.train.test_faults import _fails, _files


def test_changed_fields_are_refused_naming_old_and_new_values(finished_run, tiny_config):
  workdir = finished_run("changed")
  before = _files(workdir)
  tiny_config.seed = 1
  tiny_config.learning_rate = 1e-3
  tiny_config.quant.act.bits = 3
  _fails(lambda: train_and_evaluate(tiny_config, workdir),
         r"holds checkpoints made with learning_rate=0.003, quant=\{\"act\": \{\"bits\": 4\}\}, "
         r"seed=0, but this config has learning_rate=0.001, quant=\{\"act\": \{\"bits\": 3\}\}, "
         r"seed=1; use a new --workdir \(a resume may change only num_epochs, ")
  tiny_config.seed, tiny_config.learning_rate, tiny_config.quant.act.bits = 0, 3e-3, 4
  tiny_config.num_epochs = 4 * 32 / 3500  # fewer steps than the weights have had
  _fails(lambda: train_and_evaluate(tiny_config, workdir), r"made with num_epochs=0.0548")
  assert _files(workdir) == before


def test_rerunning_a_finished_run_changes_nothing(finished_run, tiny_config, caplog):
  caplog.set_level(logging.INFO)
  workdir = finished_run("rerun")
  before = _files(workdir)
  mtime = os.path.getmtime(os.path.join(workdir, "summary.json"))
  tiny_config.log_every_steps = 3  # a safe field: still nothing to do
  summary = train_and_evaluate(tiny_config, workdir)
  assert summary == json.loads(before["summary.json"])
  assert _files(workdir) == before
  assert os.path.getmtime(os.path.join(workdir, "summary.json")) == mtime
  assert any("holds the finished run (step 6); nothing to do" in r.getMessage()
             for r in caplog.records)


def test_more_epochs_resume_an_older_workdir_as_a_dated_amendment(finished_run, tiny_config):
  workdir = finished_run("extended")
  # As an older quantjax left it: no manifests, and a config field its record lacks.
  for step in (2, 4, 6):
    os.remove(os.path.join(workdir, "checkpoints", str(step), manifest.MANIFEST))
  config_file = os.path.join(workdir, "config.json")
  recorded = json.load(open(config_file))
  del recorded["grad_clip_norm"]
  json.dump(recorded, open(config_file, "w"))
  record_before = open(config_file).read()

  old_epochs = tiny_config.num_epochs
  tiny_config.num_epochs = 8 * 32 / 3500
  tiny_config.log_every_steps = 2
  summary = train_and_evaluate(tiny_config, workdir)
  assert summary["step"] == 8 and summary["resumed_from"] == 6
  assert open(config_file).read() == record_before  # the record is not rewritten
  amendments = json.load(open(os.path.join(workdir, "config_amendments.json")))["amendments"]
  assert len(amendments) == 1 and amendments[0]["step"] == 6
  datetime.datetime.fromisoformat(amendments[0]["date"])
  assert amendments[0]["changes"] == {
      "grad_clip_norm": {"old": "<absent>", "new": 0.0},
      "log_every_steps": {"old": 1, "new": 2},
      "num_epochs": {"old": old_epochs, "new": tiny_config.num_epochs}}
  assert Workdir(workdir).load_config().num_epochs == tiny_config.num_epochs
  lines = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
  assert [m["step"] for m in lines if "train/loss" in m] == [1, 2, 3, 4, 5, 6, 8]
  # The amended run is now finished: rerunning it changes nothing.
  assert train_and_evaluate(tiny_config, workdir) == summary
  assert len(json.load(open(os.path.join(workdir, "config_amendments.json")))["amendments"]) == 1


def test_added_or_removed_fields_are_amendments_but_a_regrouped_value_is_not():
  from quantjax.workdir import record

  old = {"seed": 0, "dropped": 1, "quant": {"act": None}}
  new = {"seed": 0, "added": 2, "quant": {"act": {"bits": 4}}}
  changes = record.diff(old, new)
  assert [f for f, _, _ in changes] == ["added", "dropped", "quant.act", "quant.act.bits"]
  assert [f for f, _, _ in record.refused(changes)] == ["quant.act", "quant.act.bits"]
  assert record.apply(old, {"added": 2, "dropped": record.ABSENT}) == {
      "seed": 0, "added": 2, "quant": {"act": None}}


def test_a_resume_may_switch_the_integer_products_but_not_the_quantizers():
  from quantjax.workdir import record

  old = {"quant": {"integer_products": "auto", "act": {"bits": 4}}}
  new = {"quant": {"integer_products": "off", "act": {"bits": 3}}}
  changes = record.diff(old, new)
  assert [f for f, _, _ in changes] == ["quant.act.bits", "quant.integer_products"]
  assert [f for f, _, _ in record.refused(changes)] == ["quant.act.bits"]
