"""Test set-up: 4 fake CPU devices (for the sharding tests) and a shared tfds data_dir."""

import os

# Must precede the first `import jax` anywhere in the test session.
os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory):
  """One tfds data_dir for the session, so mnist5k is prepared once."""
  return str(tmp_path_factory.mktemp("tfds"))
