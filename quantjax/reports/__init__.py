"""Reports: per-layer tables, model size and summaries of runs."""

from quantjax.reports.summary import layer_table, model_size_bits

__all__ = ["layer_table", "model_size_bits"]
