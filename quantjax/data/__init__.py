"""Data: mnist5k (embedded) and tfds datasets, batching, augmentation and prefetch."""

from quantjax.data.pipeline import Dataset, get_dataset, prefetch
from quantjax.data.source import SPLITS, DatasetSpec, check_name

__all__ = ["SPLITS", "Dataset", "DatasetSpec", "check_name", "get_dataset", "prefetch"]
