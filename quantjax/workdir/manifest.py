"""Content manifests: a `manifest.json` of SHA-256 hashes, written last, checked before reading.

A directory (a checkpoint step, an exported graph) is complete once its manifest exists: the
manifest is written after every other file, via a temporary file and a rename. `check` rehashes
the files and names the first one that is missing, extra, of another size or another content.
"""

from __future__ import annotations

import hashlib
import json
import os

MANIFEST = "manifest.json"
_CHUNK = 1 << 20


def _hash(path: str) -> str:
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    while chunk := f.read(_CHUNK):
      digest.update(chunk)
  return digest.hexdigest()


def _files(directory: str) -> list[str]:
  """Relative paths of every file under `directory` except the manifest, sorted."""
  out = []
  for root, _, names in os.walk(directory):
    for name in names:
      rel = os.path.relpath(os.path.join(root, name), directory)
      if rel != MANIFEST and not rel.endswith(".tmp"):
        out.append(rel)
  return sorted(out)


def write(directory: str, files: list[str] | None = None) -> None:
  """Hashes the files under `directory` into `<directory>/manifest.json` (atomically).

  Args:
    directory: e.g. a checkpoint step or an export.
    files: relative paths to cover; None = every file, and then `check` also refuses a file
      that the manifest does not list.
  """
  entries = {}
  for rel in _files(directory) if files is None else sorted(files):
    path = os.path.join(directory, rel)
    entries[rel] = {"bytes": os.path.getsize(path), "sha256": _hash(path)}
  tmp = os.path.join(directory, MANIFEST + ".tmp")
  with open(tmp, "w") as f:
    json.dump({"algorithm": "sha256", "files": entries, "exclusive": files is None}, f,
              indent=1, sort_keys=True)
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, os.path.join(directory, MANIFEST))


def has_manifest(directory: str) -> bool:
  return os.path.isfile(os.path.join(directory, MANIFEST))


def check(directory: str) -> str | None:
  """None if `directory` matches its manifest, else the first problem in a few words.

  A directory without a manifest is not checked here: callers decide what that means (made by
  an older quantjax, or a write that did not finish).
  """
  try:
    with open(os.path.join(directory, MANIFEST)) as f:
      doc = json.load(f)
    entries = doc["files"]
    if not isinstance(entries, dict):
      raise TypeError
  except (OSError, ValueError, KeyError, TypeError):
    return f"{MANIFEST} is unreadable"
  present = set(_files(directory))
  for rel in sorted(entries):
    path = os.path.join(directory, rel)
    if rel not in present:
      return f"{rel} is missing"
    entry = entries[rel]
    if not isinstance(entry, dict):
      return f"{MANIFEST} is unreadable"
    if os.path.getsize(path) != entry.get("bytes"):
      return f"{rel} has {os.path.getsize(path)} bytes, the manifest says {entry.get('bytes')}"
    if _hash(path) != entry.get("sha256"):
      return f"{rel} does not match its checksum"
  extra = sorted(present - set(entries))
  if extra and doc.get("exclusive", True):
    return f"{extra[0]} is not in the manifest"
  return None
