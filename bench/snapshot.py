"""The loaded train/validation/test splits saved to one .npz, for machines without TFDS.

The lent GPU machines have JAX but neither TensorFlow nor TFDS, and no network.
`bench/offline_data.py save` writes the splits exactly as `data.load_dataset` returns them
here; `bench/offline_data.py evaluate` and `bench/offline_train.py` read them there.
"""

import numpy as np

from l2lda_jax import data as data_lib

SPLITS = ('train', 'validation', 'test')


def save_snapshot(dataset: data_lib.Dataset, path: str):
  arrays = {f'{split}_{field}': getattr(getattr(dataset, split), field)
            for split in SPLITS for field in ('images', 'labels')}
  np.savez_compressed(path, name=dataset.name, num_classes=dataset.num_classes,
                      lossy=dataset.lossy, **arrays)


def load_snapshot(path: str) -> data_lib.Dataset:
  with np.load(path) as f:
    splits = [data_lib.Split(f[f'{split}_images'], f[f'{split}_labels']) for split in SPLITS]
    return data_lib.Dataset(str(f['name']), *splits, int(f['num_classes']), bool(f['lossy']))


def read_from_snapshot(path: str) -> None:
  """Makes `data.load_dataset` return the snapshot at `path`, whatever the config says."""
  dataset = load_snapshot(path)
  data_lib.load_dataset = lambda data_config: dataset
