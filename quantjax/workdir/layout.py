"""`Workdir`: where every file of a run lives, and how each is read and written.

  <workdir>/config.json              the config the run was made with (its record)
  <workdir>/config_amendments.json   dated changes a resume made to safe fields (see `record`)
  <workdir>/environment.json         software, devices, processes, cores: one entry per start or
                                     resume (see `environment`)
  <workdir>/checkpoints/<step>/      Orbax checkpoints, each with a manifest.json of checksums
  <workdir>/damaged_checkpoints/     steps that failed their checksums, set aside by a resume
  <workdir>/metrics.jsonl            one JSON line per logged step
  <workdir>/tensorboard/             event files
  <workdir>/summary.json             the finished run's results
  <workdir>/eval_*.json              eval.py results
  <workdir>/int_graph/               the default integer-graph export
  <workdir>/lock                     the process writing the workdir (see `lock`)

JSON files are written whole or not at all (a temporary file, then a rename). Every problem a
user can cause (a file where the workdir should be, an unreadable config, a damaged checkpoint)
is a one-line ValueError.

With several processes one writes (process 0); the others open the workdir with `writer=False`,
which makes any write of theirs an error rather than a second copy. (Orbax writes the
checkpoints' arrays from whichever process holds them.)
"""

from __future__ import annotations

import datetime
import json
import os
import shutil
from typing import Any

import ml_collections
import numpy as np
from absl import logging

from quantjax.workdir import environment, manifest, record
from quantjax.workdir.lock import Lock

CONFIG_FILE = "config.json"
AMENDMENTS_FILE = "config_amendments.json"
ENVIRONMENT_FILE = "environment.json"
SUMMARY_FILE = "summary.json"
METRICS_FILE = "metrics.jsonl"
CHECKPOINTS = "checkpoints"
DAMAGED = "damaged_checkpoints"
TENSORBOARD = "tensorboard"
EXPORT = "int_graph"


def write_text_atomic(path: str, text: str) -> None:
  """Writes `text` via a temporary file and a rename, so a crash or a kill mid-write never
  leaves half a file: the path holds the old text or the new one.

  Raises:
    ValueError: the path cannot be written (one line).
  """
  tmp = f"{path}.tmp"
  try:
    try:
      with open(tmp, "w") as f:
        f.write(text)
      os.replace(tmp, path)
    except BaseException:
      if os.path.isfile(tmp):
        os.remove(tmp)
      raise
  except IsADirectoryError:
    raise ValueError(f"cannot write {path}: it is a directory") from None
  except OSError as e:
    raise ValueError(f"cannot write {path}: {e.strerror or e}") from None


def write_json_atomic(path: str, data: Any) -> None:
  """Writes JSON atomically (`write_text_atomic`)."""
  write_text_atomic(path, json.dumps(data, indent=2, sort_keys=True, default=_json_default) + "\n")


def read_json(path: str, what: str = "a JSON object") -> Any:
  """The JSON object in `path`; a one-line ValueError if it is missing, invalid or not a dict."""
  try:
    with open(path) as f:
      data = json.load(f)
  except FileNotFoundError:
    raise ValueError(f"{path} not found") from None
  except (OSError, UnicodeDecodeError) as e:
    raise ValueError(f"{path} cannot be read: {e}") from None
  except json.JSONDecodeError as e:
    raise ValueError(f"{path} is not valid JSON: {e}") from None
  if not isinstance(data, dict):
    raise ValueError(f"{path} holds a JSON {type(data).__name__}, not {what}")
  return data


def _json_default(value: Any) -> Any:
  if isinstance(value, (np.generic, np.ndarray)) or hasattr(value, "__array__"):
    return np.asarray(value).tolist()
  raise TypeError(f"not JSON serialisable: {type(value).__name__}")


class Workdir:
  """A run directory: the paths of its files and their reading and writing."""

  def __init__(self, path: str, *, writer: bool = True):
    """`writer=False`: this process only reads (another process of the run writes)."""
    if not path or not isinstance(path, (str, os.PathLike)):
      raise ValueError(f"workdir {path!r} is not a path")
    self.path = os.fspath(path)
    self.writer = writer
    if os.path.exists(self.path) and not os.path.isdir(self.path):
      raise ValueError(f"workdir {self.path!r} is a file, not a directory")

  def _writing(self, what: str) -> None:
    if not self.writer:
      raise RuntimeError(f"this process does not write {self.path!r} (another one does); it "
                         f"tried to write {what}")

  def __repr__(self) -> str:
    return f"Workdir({self.path!r})"

  def file(self, name: str) -> str:
    return os.path.join(self.path, name)

  @property
  def config_file(self) -> str:
    return self.file(CONFIG_FILE)

  @property
  def summary_file(self) -> str:
    return self.file(SUMMARY_FILE)

  @property
  def metrics_file(self) -> str:
    return self.file(METRICS_FILE)

  @property
  def tensorboard_dir(self) -> str:
    return self.file(TENSORBOARD)

  @property
  def checkpoints_dir(self) -> str:
    return os.path.join(os.path.abspath(self.path), CHECKPOINTS)

  @property
  def export_dir(self) -> str:
    return self.file(EXPORT)

  def step_dir(self, step: int) -> str:
    return os.path.join(self.checkpoints_dir, str(step))

  def eval_file(self, split: str, mode: str, step: int, setting: str = "") -> str:
    """`eval_<split>_<mode>[_<setting>]_<step>.json`: one file per evaluation setting."""
    return self.file(f"eval_{split}_{mode}{'_' + setting if setting else ''}_{step}.json")

  def create(self) -> None:
    """Makes the directory (and parents); a one-line ValueError when it cannot be written."""
    self._writing("the directory")
    try:
      os.makedirs(self.path, exist_ok=True)
      probe = self.file(f".write_test.{os.getpid()}")
      with open(probe, "w"):
        pass
      os.remove(probe)
    except OSError as e:
      raise ValueError(f"workdir {self.path!r} cannot be written: {e.strerror or e}") from None

  def lock(self) -> Lock:
    """The workdir's lock (`with wd.lock(): ...`); call `create` first."""
    return Lock(self.path)

  # -- the config record -------------------------------------------------------------------------

  def has_config(self) -> bool:
    return os.path.isfile(self.config_file)

  def recorded_config(self) -> dict[str, Any]:
    """config.json with its amendments applied, as plain data."""
    if not self.has_config():
      raise ValueError(f"{self.config_file} not found: is {self.path!r} a quantjax workdir?")
    config = read_json(self.config_file, "a config")
    for amendment in self.amendments():
      config = record.apply(config, {f: c["new"] for f, c in amendment["changes"].items()})
    return config

  def load_config(self) -> ml_collections.ConfigDict:
    """The config the run was made with (config.json plus amendments)."""
    return ml_collections.ConfigDict(self.recorded_config())

  def record_config(self, config: ml_collections.ConfigDict) -> None:
    """Writes the config of a new run (atomically); amendments of an earlier one are dropped."""
    self._writing(CONFIG_FILE)
    self.create()
    write_json_atomic(self.config_file, record.canonical(config))
    if os.path.exists(self.file(AMENDMENTS_FILE)):
      os.remove(self.file(AMENDMENTS_FILE))

  def amendments(self) -> list[dict[str, Any]]:
    path = self.file(AMENDMENTS_FILE)
    if not os.path.exists(path):
      return []
    entries = read_json(path, "amendments").get("amendments")
    if not isinstance(entries, list) or not all(
        isinstance(e, dict) and isinstance(e.get("changes"), dict) for e in entries):
      raise ValueError(f"{path} is malformed: expected {{'amendments': [{{'changes': ...}}]}}")
    return entries

  def amend(self, changes: list[tuple[str, Any, Any]], step: int) -> None:
    """Records `changes` ((field, old, new) of safe fields) as a dated amendment at `step`."""
    self._writing(AMENDMENTS_FILE)
    entry = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
             "step": int(step),
             "changes": {f: {"old": old, "new": new} for f, old, new in changes}}
    write_json_atomic(self.file(AMENDMENTS_FILE), {"amendments": [*self.amendments(), entry]})

  def resume_changes(self, config: ml_collections.ConfigDict) -> list[tuple[str, Any, Any]]:
    """The safe changes `config` makes to the record; ValueError naming any other change."""
    changes = record.diff(self.recorded_config(), record.canonical(config))
    refused = record.refused(changes)
    if refused:
      old, new = record.describe(refused)
      raise ValueError(
          f"workdir {self.path!r} holds checkpoints made with {old}, but this config has {new}; "
          f"use a new --workdir (a resume may change only {', '.join(record.SAFE_FIELDS)}, "
          "num_epochs only upwards)")
    return changes

  # -- what the numbers depend on ------------------------------------------------------------

  def environments(self) -> list[dict[str, Any]]:
    """environment.json's entries, oldest first ([] for a run made before it existed)."""
    path = self.file(ENVIRONMENT_FILE)
    if not os.path.exists(path):
      return []
    entries = read_json(path, "environments").get("environments")
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
      raise ValueError(f"{path} is malformed: expected {{'environments': [{{...}}, ...]}}")
    return entries

  def record_environment(self, entry: dict[str, Any], step: int) -> list[tuple[str, Any, Any]]:
    """Appends `entry` (`environment.current()`) as the environment from `step` on.

    Returns:
      What differs from the previous entry and may change the numbers, as (field, old, new):
      a resumed run that differs does not repeat an uninterrupted one bit for bit.
    """
    self._writing(ENVIRONMENT_FILE)
    entries = [e for e in self.environments() if e.get("step", 0) < step]
    changed = environment.differences(entries[-1], entry) if entries else []
    write_json_atomic(self.file(ENVIRONMENT_FILE),
                      {"environments": [*entries, {"step": int(step), **entry}]})
    return changed

  # -- results -------------------------------------------------------------------------------

  def read_summary(self) -> dict[str, Any] | None:
    """summary.json, or None if the run has not finished."""
    if not os.path.exists(self.summary_file):
      return None
    return read_json(self.summary_file, "a summary")

  def write_summary(self, summary: dict[str, Any]) -> None:
    self._writing(SUMMARY_FILE)
    write_json_atomic(self.summary_file, summary)

  def write_json(self, name: str, data: Any) -> str:
    """Writes `<workdir>/<name>` atomically; returns its path."""
    self._writing(name)
    path = self.file(name)
    write_json_atomic(path, data)
    return path

  def write_text(self, name: str, text: str) -> str:
    self._writing(name)
    path = self.file(name)
    write_text_atomic(path, text)
    return path

  def truncate_metrics(self, step: int, *, keep_evaluations_at_step: bool = True) -> None:
    """Drops metrics.jsonl lines after `step` (and a line cut short by a kill).

    `keep_evaluations_at_step=False` also drops the evaluation lines (no `train/` key) at
    `step` itself: a run resumed at its final step evaluates it again.
    """
    self._writing(METRICS_FILE)
    if not os.path.exists(self.metrics_file):
      return
    kept = []
    with open(self.metrics_file) as f:
      for line in f:
        try:
          entry = json.loads(line)
        except json.JSONDecodeError:
          continue
        if not isinstance(entry, dict) or not isinstance(entry.get("step"), int):
          continue
        at_step_eval = entry["step"] == step and not any(k.startswith("train/") for k in entry)
        if entry["step"] <= step and (keep_evaluations_at_step or not at_step_eval):
          kept.append(line if line.endswith("\n") else line + "\n")
    write_text_atomic(self.metrics_file, "".join(kept))

  # -- checkpoints ---------------------------------------------------------------------------

  def checkpoint_steps(self) -> list[int]:
    """The saved steps, oldest first (nothing is created)."""
    if not os.path.isdir(self.checkpoints_dir):
      return []
    return sorted(int(n) for n in os.listdir(self.checkpoints_dir)
                  if n.isdigit() and os.path.isdir(self.step_dir(int(n))))

  def has_checkpoints(self) -> bool:
    return bool(self.checkpoint_steps())

  def finish_checkpoint(self, step: int) -> None:
    """Marks a saved step complete: its manifest, written after Orbax has finished."""
    self._writing(f"the manifest of checkpoint {step}")
    manifest.write(self.step_dir(step))

  def intact_step(self, step: int | None = None, *, fall_back: bool = False,
                  set_aside: bool = False) -> int | None:
    """The checkpoint step to read: `step`, or the newest step, checked against its manifest.

    A step without a manifest is accepted with a note if it is older than every step with one
    (saved before manifests existed), and is damaged (a save that did not finish) otherwise. A
    damaged newest step is refused, naming the newest intact one, unless `fall_back` (a resumed
    run): then it is reported in one log line and skipped, and when `set_aside` moved to
    `damaged_checkpoints/` so the run can save that step again. It is never deleted.

    Returns:
      The step, or None if there are no checkpoints.

    Raises:
      ValueError: `step` is not saved or is damaged, or every saved step is damaged.
    """
    steps = self.checkpoint_steps()
    if not steps:
      if step is not None:
        raise ValueError(f"no checkpoints in {self.path!r} (expected {self.checkpoints_dir})")
      return None
    # Steps older than the first one with a manifest were saved by an older quantjax.
    first = min((s for s in steps if manifest.has_manifest(self.step_dir(s))), default=None)
    legacy = {s for s in steps if first is None or s < first}
    if step is not None:
      if step not in steps:
        raise ValueError(f"checkpoint step {step} not in {self.path!r}; available steps: "
                         f"{', '.join(map(str, steps))}")
      problem = self._problem(step, step in legacy)
      if problem:
        raise ValueError(f"checkpoint {self.step_dir(step)} cannot be restored: {problem}")
      return step
    damaged = []
    for s in reversed(steps):
      problem = self._problem(s, s in legacy)
      if problem is None:
        break
      damaged.append((s, problem))
    else:
      raise ValueError(f"checkpoint {self.step_dir(damaged[0][0])} cannot be restored: "
                       f"{damaged[0][1]}, and no older step is intact; nothing was changed")
    if damaged and not fall_back:
      raise ValueError(f"checkpoint {self.step_dir(damaged[0][0])} cannot be restored: "
                       f"{damaged[0][1]}; the newest intact step is {s} (pass --step={s})")
    for bad, problem in damaged:
      where = self._set_aside(bad) if set_aside else "kept in place"
      logging.warning("checkpoint step %d of %s is damaged (%s); using step %d, the newest "
                      "intact one (step %d %s)", bad, self.path, problem, s, bad, where)
    return s

  def _problem(self, step: int, legacy: bool) -> str | None:
    directory = self.step_dir(step)
    if manifest.has_manifest(directory):
      return manifest.check(directory)
    if legacy:
      logging.info("checkpoint step %d of %s has no manifest (saved before checksums); read "
                   "unchecked", step, self.path)
      return None
    return "no manifest: its save did not finish"

  def _set_aside(self, step: int) -> str:
    self._writing(f"damaged checkpoint {step}")
    target_dir = self.file(DAMAGED)
    os.makedirs(target_dir, exist_ok=True)
    target = os.path.join(target_dir, str(step))
    if os.path.exists(target):
      stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%S")
      target = f"{target}.{stamp}"
    shutil.move(self.step_dir(step), target)
    return f"moved to {target}"
