"""Data: mnist5k (embedded, offline) and tfds datasets; batching, augmentation and prefetch.

  ds = get_dataset('mnist5k', data_dir=...)        # or any tfds name, e.g. 'cifar10'
  batches = prefetch(ds.train_batches(batch_size=128, seed=0, augment='shift', sharding=batch))
  for batch in ds.eval_batches('validation', batch_size=500): ...  # with batch['mask']
"""

from quantjax.data.augment import AUGMENTATIONS
from quantjax.data.pipeline import Dataset, DatasetSpec, get_dataset
from quantjax.data.prefetcher import prefetch
from quantjax.data.source import SPLITS, check_name

__all__ = [
    "AUGMENTATIONS",
    "SPLITS",
    "Dataset",
    "DatasetSpec",
    "check_name",
    "get_dataset",
    "prefetch",
]
