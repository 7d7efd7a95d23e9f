"""What train.py and eval.py print for a problem a user can cause: one line, never a traceback."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

from absl import flags

from quantjax import config_overrides, user_code
from quantjax.train.loop import NaNLossError
from quantjax.train.preemption import Preempted


def one_line(e: BaseException) -> str:
  """The first non-empty line of an exception's message (the last for a config load failure)."""
  lines = [line.strip() for line in str(e).strip().splitlines() if line.strip()]
  if not lines:
    return type(e).__name__
  if "Failed loading config file" in lines[0] or "earlier failure to load" in lines[0]:
    return f"cannot load --config: {lines[-1]}"
  return lines[0]


def parse_flags(argv: list[str]) -> list[str]:
  """`app.run`'s flag parsing, with a bad `--config.<field>` override as one line.

  The `--import` modules are imported first: the config file, loaded while the flags are parsed,
  looks its quantizers up by name.
  """
  try:
    user_code.import_modules(user_code.flag_values(argv[1:]))
  except ValueError as e:
    sys.exit(f"error: {one_line(e)}")
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    sys.exit(f"error: {one_line(e)} (--helpshort lists the flags)")
  except (AttributeError, KeyError) as e:  # ml_collections: an override of an unknown field
    message = config_overrides.unknown_field(argv)  # names the valid fields
    if message is None:
      field = str(e).strip("'\" ")
      message = (f"the config has no field {field!r} (a --config.{field}=... override); "
                 "see the config file for its fields")
    sys.exit(f"error: {message}")
  except (OSError, ValueError, TypeError) as e:  # incl. an override below a None field
    sys.exit(f"error: {config_overrides.unknown_field(argv) or one_line(e)}")


def run(fn: Callable[[], Any]) -> Any:
  """`fn()`; a bad input, a NaN loss or a signal ends the program with one line."""
  try:
    return fn()
  except Preempted as e:
    print(e, file=sys.stderr)
    sys.exit(128 + e.signum)
  except (ValueError, NaNLossError, OSError) as e:
    sys.exit(f"error: {one_line(e)}")
