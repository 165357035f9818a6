import jax
import numpy as np
import pytest
import tensorflow_datasets as tfds

from l2lda_jax import data as data_lib


def test_validation_is_carved_from_train_disjoint_and_fixed():
  images = np.arange(100, dtype=np.uint8).reshape(100, 1, 1, 1)
  labels = np.arange(100, dtype=np.int32)
  train, val = data_lib.carve_validation(images, labels, 20)
  assert len(train) == 80 and len(val) == 20
  assert set(train.labels).isdisjoint(val.labels)
  assert set(train.labels) | set(val.labels) == set(range(100))
  np.testing.assert_array_equal(train.images[:, 0, 0, 0], train.labels)  # pairs kept
  _, val_again = data_lib.carve_validation(images, labels, 20)
  np.testing.assert_array_equal(val.labels, val_again.labels)
  assert not np.array_equal(np.sort(val.labels), np.arange(80, 100))  # shuffled first


def test_validation_size_must_fit():
  with pytest.raises(data_lib.DataError, match='validation_size'):
    data_lib.carve_validation(np.zeros((10, 1, 1, 1)), np.zeros(10), 10)


def test_batches_are_a_function_of_seed_and_step():
  n, b = 50, 8
  epoch = [data_lib.batch_indices(0, s, n, b) for s in range(n // b)]
  flat = np.concatenate(epoch)
  assert len(set(flat)) == len(flat)  # no repeats within an epoch
  np.testing.assert_array_equal(data_lib.batch_indices(0, 3, n, b), epoch[3])
  assert not np.array_equal(data_lib.batch_indices(1, 3, n, b), epoch[3])
  next_epoch = data_lib.batch_indices(0, n // b, n, b)
  assert not np.array_equal(next_epoch, epoch[0])  # reshuffled


def test_augment_crop_is_a_shifted_copy_and_flip_mirrors():
  images = jax.random.uniform(jax.random.PRNGKey(0), (16, 12, 12, 1))
  np.testing.assert_array_equal(data_lib.augment(jax.random.PRNGKey(1), images, 0, False),
                                images)
  out = data_lib.augment(jax.random.PRNGKey(1), images, 4, False)
  assert out.shape == images.shape
  # Every crop of the zero-padded image is the original shifted by at most 4 pixels.
  for img, crop in zip(np.asarray(images), np.asarray(out)):
    padded = np.pad(img, ((4, 4), (4, 4), (0, 0)))
    assert any(np.array_equal(padded[i:i + 12, j:j + 12], crop)
               for i in range(9) for j in range(9))
  flipped = data_lib.augment(jax.random.PRNGKey(2), images, 0, True)
  mirrored = [np.array_equal(f, i[:, ::-1]) for f, i in zip(np.asarray(flipped),
                                                             np.asarray(images))]
  kept = [np.array_equal(f, i) for f, i in zip(np.asarray(flipped), np.asarray(images))]
  assert all(m or k for m, k in zip(mirrored, kept)) and any(mirrored) and any(kept)


def test_load_mnist_through_tfds(tiny_mnist_config):
  with tfds.testing.mock_data(num_examples=100):
    dataset = data_lib.load_dataset(tiny_mnist_config.data)
  assert len(dataset.train) == 68 and len(dataset.validation) == 32
  assert len(dataset.test) == 100
  assert dataset.train.images.shape[1:] == (28, 28, 1)
  assert dataset.train.images.dtype == np.uint8
  assert dataset.num_classes == 10 and not dataset.lossy


def test_missing_manual_files_name_the_files_and_folder(tmp_path, tiny_mnist_config):
  (tmp_path / 'train-images-idx3-ubyte.gz').write_bytes(b'')
  tiny_mnist_config.data.manual_dir = str(tmp_path)
  with pytest.raises(data_lib.DataError) as error:
    data_lib.load_dataset(tiny_mnist_config.data)
  message = str(error.value)
  assert 't10k-labels-idx1-ubyte.gz' in message and str(tmp_path) in message
  assert 'train-images-idx3-ubyte.gz,' not in message  # present files are not listed


def test_manual_dir_that_does_not_exist(tiny_mnist_config):
  tiny_mnist_config.data.manual_dir = '/nonexistent/mnist'
  with pytest.raises(data_lib.DataError, match='/nonexistent/mnist'):
    data_lib.load_dataset(tiny_mnist_config.data)


def test_cifar10_jpeg_tarball_goes_through_tfds_image_folder(tmp_path):
  """A tiny tarball in the layout of the offline copy loads, labelled lossy."""
  import io
  import tarfile
  from PIL import Image
  from configs import cifar10
  tar_path = tmp_path / 'manual' / data_lib.CIFAR10_JPEG_TARBALL
  tar_path.parent.mkdir()
  rng = np.random.default_rng(0)
  with tarfile.open(tar_path, 'w:gz') as tar:
    for split, count in (('train', 6), ('test', 2)):
      for cls in ('airplane', 'automobile'):
        for i in range(count):
          buf = io.BytesIO()
          Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(buf, 'JPEG')
          info = tarfile.TarInfo(f'CIFAR-10-images/{split}/{cls}/{i:04d}.jpg')
          info.size = buf.tell()
          buf.seek(0)
          tar.addfile(info, buf)
  config = cifar10.get_config('smoke').data
  config.manual_dir = str(tar_path.parent)
  config.tfds_data_dir = str(tmp_path / 'tfds')
  config.validation_size = 4
  dataset = data_lib.load_dataset(config)
  assert dataset.lossy
  assert len(dataset.train) == 8 and len(dataset.validation) == 4 and len(dataset.test) == 4
  assert dataset.train.images.shape[1:] == (32, 32, 3)
  assert set(dataset.test.labels) == {0, 1}


def test_unreachable_hosts_tells_a_listening_port_from_a_closed_one():
  import socket
  server = socket.socket()
  server.bind(('127.0.0.1', 0))
  server.listen(1)
  open_port = server.getsockname()[1]
  closed = socket.socket()
  closed.bind(('127.0.0.1', 0))
  closed_port = closed.getsockname()[1]  # bound, not listening: connections are refused
  try:
    assert data_lib.unreachable_hosts([f'http://127.0.0.1:{open_port}/a.gz']) == []
    assert data_lib.unreachable_hosts([f'http://127.0.0.1:{closed_port}/a.gz'],
                                      timeout=1.0) == ['127.0.0.1']
  finally:
    server.close()
    closed.close()


def test_offline_without_a_cache_fails_at_once_with_the_way_out(tiny_mnist_config, tmp_path,
                                                                monkeypatch):
  tiny_mnist_config.data.manual_dir = ''
  tiny_mnist_config.data.tfds_data_dir = str(tmp_path / 'empty_cache')
  seen = []
  monkeypatch.setattr(data_lib, 'unreachable_hosts',
                      lambda urls, **_: seen.extend(urls) or ['download.invalid'])
  with pytest.raises(data_lib.DataError) as error:
    data_lib.load_dataset(tiny_mnist_config.data)
  message = str(error.value)
  assert 'download.invalid cannot be reached' in message and 'L2LDA_MANUAL_DIR' in message
  assert '\n' not in message
  assert any(url.endswith('train-images-idx3-ubyte.gz') for url in seen)  # TFDS's own URLs


@pytest.mark.parametrize('quiet', [True, False])
def test_tfds_preparation_prints_nothing_unless_verbose(quiet, monkeypatch, capsys):
  from tensorflow_datasets.core.utils import tqdm_utils
  from l2lda_jax import console
  monkeypatch.setattr(console, '_libraries_quiet', quiet)
  with console.tfds_preparation_output():
    print('Downloading and preparing dataset Unknown size')
    bars_during = tqdm_utils._active
  assert ('Unknown size' in capsys.readouterr().out) is not quiet
  assert bars_during is not quiet
  assert tqdm_utils._active  # TFDS's bars are back for anything after the preparation
