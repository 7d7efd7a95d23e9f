"""Runs a notebook top to bottom in place, keeping its outputs (how the committed outputs are made).

  python notebooks/run.py notebooks/extend_a_quantizer.ipynb          # full run, outputs saved
  QUANTJAX_NOTEBOOK_FAST=1 python notebooks/run.py --no-save notebooks/inspect_a_model.ipynb

The notebooks read QUANTJAX_NOTEBOOK_FAST=1 (a few training steps: what the test suite runs) and
QUANTJAX_NOTEBOOK_WORKDIR (where their runs go; default a fresh temporary directory).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import nbclient
import nbformat


def execute(path: str, *, save: bool, timeout: int = 1800) -> nbformat.NotebookNode:
  """Executes `path` with the notebook's own directory as working directory."""
  nb = nbformat.read(path, as_version=4)
  client = nbclient.NotebookClient(
      nb, timeout=timeout, kernel_name="python3",
      resources={"metadata": {"path": os.path.dirname(os.path.abspath(path))}})
  client.execute()
  if save:
    nbformat.write(nb, path)
  return nb


def main() -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("notebooks", nargs="+")
  parser.add_argument("--no-save", action="store_true", help="Do not write the outputs back.")
  args = parser.parse_args()
  for path in args.notebooks:
    start = time.perf_counter()
    execute(path, save=not args.no_save)
    print(f"{path}: ran in {time.perf_counter() - start:.0f} s", flush=True)
  return 0


if __name__ == "__main__":
  sys.exit(main())
