"""Integer export: a trained quantized model lowered to an integer graph in a packed format."""

from quantjax.export.graph import FORMAT_VERSION, Graph
from quantjax.export.lower import lower
from quantjax.export.workdir import export_run, export_workdir, load_run

__all__ = ["FORMAT_VERSION", "Graph", "export_run", "export_workdir", "load_run", "lower"]
