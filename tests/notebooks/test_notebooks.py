"""The notebooks run top to bottom in their fast mode (a few training steps each)."""

import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "notebooks"))

import run  # noqa: E402  notebooks/run.py: the runner that makes the committed outputs

NOTEBOOKS = sorted(f for f in os.listdir(os.path.join(ROOT, "notebooks")) if f.endswith(".ipynb"))


def test_both_notebooks_exist():
  assert {"extend_a_quantizer.ipynb", "inspect_a_model.ipynb"} <= set(NOTEBOOKS)


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_runs_top_to_bottom(name, tmp_path, monkeypatch):
  monkeypatch.setenv("QUANTJAX_NOTEBOOK_FAST", "1")
  monkeypatch.setenv("QUANTJAX_NOTEBOOK_WORKDIR", str(tmp_path))
  nb = run.execute(os.path.join(ROOT, "notebooks", name), save=False)
  errors = [o for cell in nb.cells if cell.cell_type == "code"
            for o in cell.get("outputs", []) if o.get("output_type") == "error"]
  assert not errors


def test_committed_notebooks_hold_outputs_of_a_full_run():
  import nbformat

  for name in NOTEBOOKS:
    nb = nbformat.read(os.path.join(ROOT, "notebooks", name), as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(c.get("execution_count") for c in code), f"{name} has cells that never ran"
    text = "".join(o.get("text", "") for c in code for o in c.get("outputs", []))
    assert "fast=False" in text, f"{name}'s outputs are not from a full run"
