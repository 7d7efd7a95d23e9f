"""Whether a tfds dataset can be opened, checked before tfds tries to download it.

Without a network, tfds retries a download for minutes and leaves a partial one in `data_dir`.
`check_can_prepare` answers in seconds instead: a dataset that is prepared, or that tfds may
download (the network answers), passes; otherwise a one-line ValueError says how to prepare it.
"""

from __future__ import annotations

import inspect
import os
import socket
import threading
import urllib.parse

import tensorflow_datasets as tfds

_PROBE = ("storage.googleapis.com", 443)  # where tfds looks first for prepared datasets
_PROBE_TIMEOUT_S = 4.0
def _download_method():
  return inspect.getattr_static(tfds.core.DatasetBuilder, "download_and_prepare")


_REAL_DOWNLOAD = _download_method()  # replaced by tfds.testing.mock_data


def _reachable(address: tuple[str, int], timeout_s: float) -> bool:
  """Whether a TCP connection to `address` (or the HTTPS proxy) opens within `timeout_s`."""
  proxy = os.environ.get("HTTPS_PROXY") or os.environ.get("https_proxy")
  if proxy:
    parsed = urllib.parse.urlparse(proxy if "://" in proxy else f"http://{proxy}")
    if parsed.hostname:
      address = (parsed.hostname, parsed.port or 80)
  result = []

  def probe():  # in a thread: name resolution has no timeout of its own
    try:
      socket.create_connection(address, timeout=timeout_s).close()
      result.append(True)
    except OSError:
      pass

  thread = threading.Thread(target=probe, daemon=True)
  thread.start()
  thread.join(timeout_s)
  return bool(result)


def check_can_prepare(name: str, data_dir: str | None, download: bool,
                      builder_kwargs: dict) -> None:
  """Raises a one-line ValueError if tfds would download `name` and the network is unreachable."""
  if not download or _download_method() is not _REAL_DOWNLOAD:
    return  # no download (the caller reports an unprepared dataset), or tfds.testing.mock_data
  try:
    prepared = tfds.builder(name, data_dir=data_dir, **builder_kwargs).is_prepared()
  except Exception:  # noqa: BLE001  tfds reports its own problems when it opens the dataset
    return
  if prepared:
    return
  where = data_dir or "the default tfds data_dir (~/tensorflow_datasets)"
  how = (f"prepare it where there is a network (tfds build {name} --file_format=array_record "
         f"--data_dir=DIR), copy DIR here and set --config.data_dir=DIR")
  if not _reachable(_PROBE, _PROBE_TIMEOUT_S):
    raise ValueError(f"dataset {name!r} is not prepared in {where}, and the network is "
                     f"unreachable to download it; {how}")
