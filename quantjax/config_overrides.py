"""`--config.<field>=value` overrides (ml_collections config_flags): the one line for a bad one.

config_flags overrides only fields the config file's `get_config()` holds; an override of any
other field ends in an AttributeError or KeyError that names the field alone, without its place or
the valid alternatives. `unknown_field` finds the first such override on the command line and says
which fields its parent has. Quantizer specs hold every field of their quantizer
(`quantjax.intercept.spec`), so the fields listed for one are exactly the quantizer's.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

import ml_collections
from absl import flags


def override_paths(argv: Sequence[str], name: str = "config") -> list[str]:
  """The dotted paths of the `--<name>.<path>=...` (or `--no<name>.<path>`) overrides in argv."""
  paths = []
  for arg in argv:
    match = re.match(rf"^--?(?:no)?{re.escape(name)}\.([^=]+)", arg)
    if match:
      paths.append(match.group(1))
  return paths


def config_file(argv: Sequence[str], name: str = "config") -> str | None:
  """The value of `--<name>=FILE` or `--<name> FILE` in argv."""
  for i, arg in enumerate(argv):
    match = re.match(rf"^--?{re.escape(name)}(=(.*))?$", arg)
    if match:
      return match.group(2) if match.group(1) else (argv[i + 1] if i + 1 < len(argv) else None)
  return None


def missing_field(config: Any, path: str, name: str = "config") -> str | None:
  """One line if `path` does not lead to a field of `config`, naming the valid fields; else None.

  Args:
    config: the config as its file builds it (before overrides).
    path: dotted override path, e.g. 'quant.weight.estimator'.
    name: the flag's name, for the message.

  Returns:
    e.g. "--config.quant.weight.estimatr: config.quant.weight has no field 'estimatr'; valid
    fields: bits, estimator, ...", or None if every part of the path exists.
  """
  node, where = config, name
  for part in path.split("."):
    if "[" in part:  # an index into a sequence: left to config_flags
      return None
    if isinstance(node, (ml_collections.ConfigDict, Mapping)):
      if part not in node:
        valid = ", ".join(sorted(str(k) for k in node.keys())) or "(none)"
        return (f"--{name}.{path}: {where} has no field {part!r}; valid fields: {valid}")
      node, where = node[part], f"{where}.{part}"
    elif node is None:
      return (f"--{name}.{path}: {where} is None, not a group of fields; set it whole, e.g. "
              f"--{where}=\"{{'name': 'uniform', 'bits': 8}}\"")
    else:
      return f"--{name}.{path}: {where} is a {type(node).__name__}, not a group of fields"
  return None


def unknown_field(argv: Sequence[str], name: str = "config") -> str | None:
  """One line for the first override in argv of a field the config file does not define.

  Loads the config file named on the command line with the flag's own parser (as config_flags
  does), then walks each override's path. None if none is bad or the file cannot be loaded.
  """
  path = config_file(argv, name)
  if path is None or name not in flags.FLAGS:
    return None
  try:
    config = flags.FLAGS[name].parser.parse(path)
  except Exception:  # noqa: BLE001  the load error is reported by whoever called us
    return None
  for override in override_paths(argv, name):
    message = missing_field(config, override, name)
    if message:
      return message
  return None
