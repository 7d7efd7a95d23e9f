"""Files written whole or not at all: a failure mid-write keeps what was there."""

import json

import pytest

from quantjax.workdir import write_json_atomic, write_text_atomic


class _Unwritable:
  """Not text: `write` fails after the temporary file is opened, as a kill mid-write would."""


def test_a_failed_write_keeps_the_old_text(tmp_path):
  path = tmp_path / "table.md"
  write_text_atomic(str(path), "old table\n")
  with pytest.raises(TypeError):
    write_text_atomic(str(path), _Unwritable())
  assert path.read_text() == "old table\n"
  assert sorted(p.name for p in tmp_path.iterdir()) == ["table.md"]  # no temporary left
  write_text_atomic(str(path), "new table\n")
  assert path.read_text() == "new table\n"


def test_json_is_written_through_the_same_path(tmp_path):
  path = tmp_path / "summary.json"
  write_json_atomic(str(path), {"b": 1, "a": [1.5]})
  assert path.read_text() == '{\n  "a": [\n    1.5\n  ],\n  "b": 1\n}\n'
  assert json.loads(path.read_text()) == {"a": [1.5], "b": 1}


def test_an_unwritable_path_is_one_line(tmp_path):
  (tmp_path / "out").mkdir()
  with pytest.raises(ValueError, match=r"^cannot write .*out: it is a directory$"):
    write_text_atomic(str(tmp_path / "out"), "x")
  assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
  with pytest.raises(ValueError, match=r"^cannot write .*missing/x.md: No such file or directory$"):
    write_text_atomic(str(tmp_path / "missing" / "x.md"), "x")
