"""Test set-up: 4 fake CPU devices (for the sharding tests) and a shared tfds data_dir."""

import os

# Must precede the first `import jax` anywhere in the test session.
os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import ast  # noqa: E402
import functools  # noqa: E402

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory):
  """One tfds data_dir for the session, so mnist5k is prepared once."""
  return str(tmp_path_factory.mktemp("tfds"))


def _has_module_fixture(path) -> bool:
  """Whether the test module at `path` defines a `pytest.fixture(scope="module")`."""
  try:
    tree = ast.parse(path.read_text())
  except (OSError, SyntaxError):
    return False
  return any(isinstance(d, ast.Call) and any(
      k.arg == "scope" and isinstance(k.value, ast.Constant) and k.value.value == "module"
      for k in d.keywords)
      for node in ast.walk(tree) if isinstance(node, ast.FunctionDef)
      for d in node.decorator_list)


@pytest.hookimpl(optionalhook=True)  # a pytest-xdist hook: unknown without the plugin
def pytest_xdist_make_scheduler(config, log):
  """`-n N`: each test is its own unit of work, except that a module defining a module-scoped
  fixture (a trained run, a whole search) is one unit, so the fixture is built on one worker
  once rather than on every worker that gets one of its tests."""
  if config.getvalue("dist") != "load":
    return None  # another --dist mode: xdist's own scheduler
  from xdist.scheduler import LoadScopeScheduling

  grouped = functools.cache(lambda path: _has_module_fixture(config.rootpath / path))

  class ModuleFixtureScheduling(LoadScopeScheduling):
    def _split_scope(self, nodeid: str) -> str:
      path = nodeid.split("::", 1)[0]
      return path if grouped(path) else nodeid

  return ModuleFixtureScheduling(config, log)
