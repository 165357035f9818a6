"""Input pipeline: TFDS datasets held in host memory, batches as a function of the step.

MNIST and CIFAR-10 fit in memory, so each split is read from TFDS once into uint8
arrays. A training batch is then a pure function of (seed, step): resuming at any
step reproduces the uninterrupted run exactly, with no iterator state to save.
Augmentation (SPEC section 4) runs inside the compiled step.
"""

import dataclasses
import functools
import os
import socket
import tarfile
import urllib.parse
import urllib.request

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from l2lda_jax import console

# Seconds to wait for a download host before calling the machine offline.
NETWORK_TIMEOUT_S = 5.0
# The validation split is carved with a fixed seed, so it never depends on config.seed.
_SPLIT_SEED = 20190101

MNIST_FILES = ('train-images-idx3-ubyte.gz', 'train-labels-idx1-ubyte.gz',
               't10k-images-idx3-ubyte.gz', 't10k-labels-idx1-ubyte.gz')
CIFAR10_JPEG_TARBALL = 'cifar10-jpeg.tar.gz'
LOSSY_NOTE = 'LOSSY JPEG copy of CIFAR-10: not comparable with published results'


class DataError(RuntimeError):
  """A dataset could not be found or read; the message says what to do."""


@dataclasses.dataclass(frozen=True)
class Split:
  images: np.ndarray  # uint8, NHWC
  labels: np.ndarray  # int32

  def __len__(self):
    return len(self.labels)

  def take(self, n: int) -> 'Split':
    """The first n examples (all of them when n <= 0)."""
    return self if n <= 0 else Split(self.images[:n], self.labels[:n])

  def select(self, indices: np.ndarray) -> 'Split':
    """The examples at `indices`, in that order."""
    return Split(self.images[indices], self.labels[indices])


@dataclasses.dataclass(frozen=True)
class Dataset:
  name: str
  train: Split
  validation: Split
  test: Split
  num_classes: int
  lossy: bool = False  # True for the offline JPEG copy of CIFAR-10


def carve_validation(images: np.ndarray, labels: np.ndarray,
                     validation_size: int) -> tuple[Split, Split]:
  """Splits the training set into (train, validation) after a fixed-seed shuffle."""
  if not 0 < validation_size < len(labels):
    raise DataError(f'config.data.validation_size={validation_size} must be in '
                    f'(0, {len(labels)}) for a training set of {len(labels)} images')
  order = np.random.default_rng(_SPLIT_SEED).permutation(len(labels))
  train, val = order[:-validation_size], order[-validation_size:]
  return Split(images[train], labels[train]), Split(images[val], labels[val])


def _check_manual_files(manual_dir: str, names: tuple[str, ...], dataset: str):
  missing = [n for n in names if not os.path.isfile(os.path.join(manual_dir, n))]
  if missing:
    raise DataError(
        f'{dataset}: missing {", ".join(missing)} in manual_dir {manual_dir!r} '
        f'(config.data.manual_dir / L2LDA_MANUAL_DIR); put the original files there.')


def _as_arrays(builder, split: str) -> tuple[np.ndarray, np.ndarray]:
  import tensorflow_datasets as tfds  # heavy import, only when data is needed
  # Fixed-size chunks rather than batch_size=-1, which needs the split's size up front.
  chunks = list(tfds.as_numpy(builder.as_dataset(split=split, batch_size=10_000,
                                                 shuffle_files=False)))
  images = np.concatenate([c['image'] for c in chunks]).astype(np.uint8)
  return images, np.concatenate([c['label'] for c in chunks]).astype(np.int32)


def _offline_help(name: str) -> str:
  files = ', '.join(MNIST_FILES) if name == 'mnist' else CIFAR10_JPEG_TARBALL
  return (f'Offline, put {files} in a folder and set L2LDA_MANUAL_DIR (or '
          f'--config.data.manual_dir) to it.')


def unreachable_hosts(urls, timeout: float = NETWORK_TIMEOUT_S) -> list[str]:
  """The hosts of `urls` that do not accept a TCP connection within `timeout` seconds."""
  hosts = {(parts.hostname, parts.port or (443 if parts.scheme == 'https' else 80))
           for parts in map(urllib.parse.urlparse, urls) if parts.hostname}
  unreachable = []
  for host, port in sorted(hosts):
    try:
      socket.create_connection((host, port), timeout=timeout).close()
    except OSError:
      unreachable.append(host)
  return unreachable


def _will_prepare(builder) -> bool:
  """Whether download_and_prepare will do work: an unprepared builder and TFDS's own
  method (tfds.testing.mock_data swaps in one that reads nothing). It then reads the
  manual dir, or without one downloads."""
  method = type(builder).download_and_prepare
  return (not builder.is_prepared()
          and getattr(method, '__module__', '').startswith('tensorflow_datasets.core'))


def _prepared_builder(name: str, data_dir: str | None, manual_dir: str):
  """A TFDS builder for `name`, prepared from manual_dir when one is given."""
  import tensorflow_datasets as tfds
  builder = tfds.builder(name, data_dir=data_dir)
  if manual_dir and name == 'mnist':
    _check_manual_files(manual_dir, MNIST_FILES, name)
  preparing = _will_prepare(builder)
  if not manual_dir and preparing and not urllib.request.getproxies():
    # TFDS would retry each file for minutes before failing; a closed network shows in
    # seconds. (Behind a proxy a direct connection proves nothing: TFDS then decides.)
    offline = unreachable_hosts(builder.url_infos or {})
    if offline:
      raise DataError(f'{name}: not in the TFDS cache ({builder.data_dir}) and '
                      f'{", ".join(offline)} cannot be reached to download it. '
                      + _offline_help(name))
  download_config = tfds.download.DownloadConfig(manual_dir=manual_dir or None)
  if preparing:
    logging.info('data: preparing TFDS %s in %s from %s (first use only)', name,
                 builder.data_dir, manual_dir or 'the download')
  try:
    with console.tfds_preparation_output():
      builder.download_and_prepare(download_config=download_config)
  except Exception as e:  # TFDS raises many types offline; one message for all
    raise DataError(
        f'{name}: TFDS could not download or prepare the data ({type(e).__name__}: '
        f'{str(e).splitlines()[0] if str(e) else ""}). ' + _offline_help(name)) from e
  return builder


def _cifar10_jpeg_builder(manual_dir: str, data_dir: str | None):
  """TFDS's ImageFolder over the extracted lossy JPEG copy of CIFAR-10."""
  import tensorflow_datasets as tfds
  _check_manual_files(manual_dir, (CIFAR10_JPEG_TARBALL,), 'cifar10')
  cache = os.path.join(data_dir or os.path.expanduser('~/tensorflow_datasets'),
                       'cifar10_jpeg_extracted')
  root = os.path.join(cache, 'CIFAR-10-images')
  done_marker = os.path.join(cache, '.complete')
  if not os.path.exists(done_marker):
    os.makedirs(cache, exist_ok=True)
    with tarfile.open(os.path.join(manual_dir, CIFAR10_JPEG_TARBALL)) as tar:
      tar.extractall(cache, filter='data')
    open(done_marker, 'w').close()
  return tfds.ImageFolder(root)


def describe_source(data_config, dataset: 'Dataset') -> str:
  """Where the data came from, and the split sizes: one line for the start of a run."""
  cache = data_config.tfds_data_dir or os.path.expanduser('~/tensorflow_datasets')
  source = f'TFDS {dataset.name} in {cache}'
  if data_config.manual_dir:
    source += f' (prepared from {data_config.manual_dir})'
  if dataset.lossy:
    source += ' [LOSSY JPEG copy]'
  return (f'{source}: {len(dataset.train)} train, {len(dataset.validation)} validation, '
          f'{len(dataset.test)} test images')


def load_dataset(data_config) -> Dataset:
  """Reads train/validation/test splits of `config.data.name` into memory."""
  name, manual_dir = data_config.name, data_config.manual_dir
  data_dir = data_config.tfds_data_dir or None
  if manual_dir and not os.path.isdir(manual_dir):
    raise DataError(f'config.data.manual_dir: {manual_dir!r} is not a directory')
  lossy = False
  if name == 'mnist':
    builder = _prepared_builder(name, data_dir, manual_dir)
  elif name == 'cifar10' and manual_dir:
    builder, lossy = _cifar10_jpeg_builder(manual_dir, data_dir), True
  elif name == 'cifar10':
    builder = _prepared_builder(name, data_dir, manual_dir)
  else:
    raise DataError(f'config.data.name: unknown dataset {name!r} (mnist or cifar10)')
  train, validation = carve_validation(*_as_arrays(builder, 'train'),
                                       data_config.validation_size)
  test = Split(*_as_arrays(builder, 'test'))
  num_classes = int(max(train.labels.max(), test.labels.max())) + 1
  return Dataset(name, train, validation, test, num_classes, lossy)


@functools.lru_cache(maxsize=2)
def _epoch_order(seed: int, epoch: int, num_examples: int) -> np.ndarray:
  return np.random.default_rng([seed, epoch]).permutation(num_examples)


def batch_indices(seed: int, step: int, num_examples: int, batch_size: int) -> np.ndarray:
  """Indices of the training batch at `step`: epoch-wise shuffles, drop remainder."""
  steps_per_epoch = num_examples // batch_size
  epoch, position = divmod(step, steps_per_epoch)
  order = _epoch_order(seed, epoch, num_examples)
  return order[position * batch_size:(position + 1) * batch_size]


def to_float(images: jax.Array) -> jax.Array:
  """uint8 pixels -> float32 in [0, 1]."""
  return images.astype(jnp.float32) / 255.0


def augment(key: jax.Array, images: jax.Array, crop_padding: int,
            horizontal_flip: bool) -> jax.Array:
  """Random crop after zero-padding by `crop_padding`, optional horizontal flip."""
  n, h, w, c = images.shape
  crop_key, flip_key = jax.random.split(key)
  if crop_padding > 0:
    padded = jnp.pad(images, ((0, 0), (crop_padding,) * 2, (crop_padding,) * 2, (0, 0)))
    offsets = jax.random.randint(crop_key, (n, 2), 0, 2 * crop_padding + 1)
    crop = lambda img, off: jax.lax.dynamic_slice(img, (off[0], off[1], 0), (h, w, c))
    images = jax.vmap(crop)(padded, offsets)
  if horizontal_flip:
    flip = jax.random.bernoulli(flip_key, 0.5, (n, 1, 1, 1))
    images = jnp.where(flip, images[:, :, ::-1, :], images)
  return images
