"""Run directories: one owner for the files of a run (see `layout`), its lock and checksums."""

from quantjax.workdir.layout import Workdir, read_json, write_json_atomic, write_text_atomic
from quantjax.workdir.lock import Lock

__all__ = ["Lock", "Workdir", "read_json", "write_json_atomic", "write_text_atomic"]
