"""The export tests share the intsim fixtures (small quantized models)."""

from tests.intsim.conftest import quantized_run  # noqa: F401
