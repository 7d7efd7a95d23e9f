"""User code for the command-line tools: the modules to import before any name is resolved.

Quantizers, models and datasets are found by registry name, so a quantizer registered in a user's
module exists only once that module is imported. Every tool takes the modules as a repeatable
`--import=my_quantizers.py` (a file) or `--import=my_package.my_module` (a module on the path),
and a config lists them in `config.imports`. `train.py` records the union in the run's
config.json, so `eval.py`, `python -m quantjax.export`, `python -m quantjax.cost` and
`python -m quantjax.reports.levels` on that workdir import them with nothing repeated.
A file is recorded by its absolute path; an import that fails is one line naming the module.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import re
import sys
from collections.abc import Iterable, Sequence
from typing import Any

from absl import flags

FLAG = "import"  # --import=module_or_path.py, repeatable


def define_flag() -> flags.FlagHolder:
  """Declares the program's repeatable `--import` flag (call once per program)."""
  return flags.DEFINE_multi_string(
    FLAG,
    [],
    "A module (my_pkg.my_module) or file (my_quantizers.py) to import first, so the "
    "quantizers, models and datasets it registers are found; repeatable. train.py records them "
    "in the run's config.json (config.imports).",
  )


def is_file(entry: str) -> bool:
  return entry.endswith(".py") or os.sep in entry


def normalise(entries: Iterable[str]) -> list[str]:
  """Entries as recorded: files by absolute path, modules by name, duplicates dropped."""
  out = []
  for entry in entries:
    entry = str(entry).strip()
    if not entry:
      continue
    entry = os.path.abspath(os.path.expanduser(entry)) if is_file(entry) else entry
    if entry not in out:
      out.append(entry)
  return out


def _file_version(path: str) -> tuple[int, int]:
  stat = os.stat(path)
  return stat.st_mtime_ns, stat.st_size


def _import_file(path: str) -> None:
  """Executes the file as module `<its base name>`, unless that module is this file unchanged.

  A file edited since it was imported (a notebook cell that writes it, run again) is executed
  again, so the quantizers it registers replace their earlier versions.
  """
  if not os.path.isfile(path):
    raise FileNotFoundError(f"no such file {path}")
  name = re.sub(r"\W", "_", os.path.splitext(os.path.basename(path))[0])
  loaded = sys.modules.get(name)
  if (
    loaded is not None
    and os.path.abspath(getattr(loaded, "__file__", "") or "") == path
    and getattr(loaded, "__quantjax_file_version__", None) == _file_version(path)
  ):
    return  # already imported (a second tool in the same process, a notebook)
  version = _file_version(path)
  spec = importlib.util.spec_from_file_location(name, path)
  module = importlib.util.module_from_spec(spec)
  sys.modules[name] = module  # dataclasses and pickling look the module up by name
  try:
    spec.loader.exec_module(module)
  except BaseException:
    if loaded is None:
      sys.modules.pop(name, None)
    else:
      sys.modules[name] = loaded
    raise
  module.__quantjax_file_version__ = version


def import_modules(entries: Iterable[str]) -> list[str]:
  """Imports each module name or .py file, in order.

  Args:
    entries: module names (`my_pkg.quantizers`) or paths of .py files.

  Returns:
    The entries as recorded (`normalise`).

  Raises:
    ValueError: one line naming the module that failed to import and why.
  """
  entries = normalise(entries)
  if os.getcwd() not in sys.path:  # `python -m` puts the working directory there; scripts do not
    sys.path.append(os.getcwd())
  for entry in entries:
    try:
      if is_file(entry):
        _import_file(entry)
      else:
        importlib.import_module(entry)
    except Exception as e:  # noqa: BLE001 (any error in user code is the user's one line)
      lines = [line.strip() for line in str(e).splitlines() if line.strip()]
      why = f"{type(e).__name__}: {lines[0]}" if lines else type(e).__name__
      raise ValueError(f"cannot import {entry!r} (--import / config.imports): {why}") from None
  return entries


def flag_values(argv: Sequence[str]) -> list[str]:
  """The `--import` values on a command line, read before the flags are parsed.

  The config file is loaded while the flags are parsed, and its quantizer specs look their
  quantizers up by name, so user modules are imported first.
  """
  values = []
  for i, arg in enumerate(argv):
    match = re.match(rf"^--?{FLAG}(=(.*))?$", arg)
    if match:
      values.append(
        match.group(2) if match.group(1) else (argv[i + 1] if i + 1 < len(argv) else "")
      )
  return values


def import_for_config(config: Any, extra: Iterable[str] = ()) -> list[str]:
  """Imports `config.imports` and `extra`, and records them all in `config.imports`.

  Args:
    config: the run's ConfigDict (its `imports` field is created if the config lacks it).
    extra: entries from the command line (`--import`).

  Returns:
    The entries imported, as recorded.
  """
  entries = import_modules([*(config.get("imports") or ()), *extra])
  if entries or "imports" in config:
    with config.unlocked():
      config.imports = tuple(entries)
  return entries


def import_for_workdir(workdir: str, extra: Iterable[str] = ()) -> list[str]:
  """Imports the modules a run recorded (`config.imports` in its config.json) and `extra`."""
  from quantjax.workdir import Workdir  # noqa: PLC0415 (keeps this module light for flag parsing)

  wd = Workdir(workdir)
  config = wd.recorded_config() if wd.has_config() else {}
  recorded = config.get("imports") or ()
  entries = import_modules([*recorded, *extra])
  _check_quantizers_found(workdir, config.get("quant") or {}, entries)
  return entries


def _quantizer_names(tree: Any) -> set[str]:
  """The `name` of every quantizer spec in a recorded `quant` block (dicts, lists, rules)."""
  names = set()
  if isinstance(tree, dict):
    if isinstance(tree.get("name"), str):
      names.add(tree["name"])
    for value in tree.values():
      names |= _quantizer_names(value)
  elif isinstance(tree, (list, tuple)):
    for value in tree:
      names |= _quantizer_names(value)
  return names


def _check_quantizers_found(workdir: str, quant: dict, entries: Sequence[str]) -> None:
  """One line naming a quantizer the run used that no import registered, and the way out."""
  from quantjax import quantizers  # noqa: PLC0415 (keeps this module light for flag parsing)

  missing = sorted(_quantizer_names(quant) - set(quantizers.names()) - {"none", "float"})
  if missing:
    imported = ", ".join(entries) or "none"
    raise ValueError(
      f"run {workdir!r} uses quantizer {missing[0]!r}, which no imported module registers "
      f"(imports: {imported}); a quantizer defined in a notebook cell or a script's __main__ "
      "cannot be imported again: define it in a module and name it in config.imports or with "
      "--import"
    )
