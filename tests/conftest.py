"""Shared fixtures: tiny configs over mock TFDS data (no files, no network)."""

import os
import sys
import tempfile

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)  # `configs` is imported as a package by the config files

# One persistent XLA compilation cache for the whole test run, subprocesses included (they
# inherit the environment): many tests compile the same tiny programs, and compilation is
# most of their time on a 2-core CPU. Set before JAX is imported; results are unchanged.
os.environ.setdefault('JAX_COMPILATION_CACHE_DIR',
                      tempfile.mkdtemp(prefix='l2lda_jax_test_xla_cache_'))
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0.2')
# XLA:CPU's LLVM optimisation is most of the compile time of these tiny programs, which then
# run a few steps: the suite compiles without it (docs/PERFORMANCE.md: a test file in 0.61x
# the time). Results agree to float rounding; the suite compares programs built alike, or
# within a tolerance. Its operations also run on one thread each: the two xdist workers (and
# the subprocesses some tests start) already fill both cores, and Eigen's thread pool beside
# them adds switching (docs/PERFORMANCE.md: three test files in 0.89-0.94x the time, two
# A/B pairs; the whole suite's run-to-run spread is larger). And it emits its fusions the
# older way, not with the MLIR fusion emitters, which take most of the remaining compile
# time (docs/PERFORMANCE.md: a tiny L2L-DA run's compilation 21-23 -> 9-11 s, its process
# 0.65x the CPU time).
# Subprocesses inherit all three (and add their own flags to them).
TEST_XLA_FLAGS = ('--xla_backend_optimization_level=0 --xla_cpu_multi_thread_eigen=false '
                  '--xla_cpu_use_fusion_emitters=false')
os.environ['XLA_FLAGS'] = f"{os.environ.get('XLA_FLAGS', '')} {TEST_XLA_FLAGS}".strip()


@pytest.fixture
def tiny_mnist_config():
  """configs/mnist.py:smoke shrunk further, reading mock data (no manual_dir)."""
  return make_tiny_mnist_config()


def make_tiny_mnist_config():
  """The tiny_mnist_config fixture's config, for module-scoped fixtures too."""
  from configs import mnist
  config = mnist.get_config('smoke')
  config.data.manual_dir = ''
  config.data.validation_size = 32
  config.train.steps = 6
  config.train.batch_size = 16
  config.train.clean_warmup_steps = 2
  config.train.lr_decay_steps = (4,)
  config.attack.pgd_steps = 2
  config.attack.cw_steps = 2
  config.eval.every_steps = 3
  config.eval.num_examples = 32
  config.eval.batch_size = 32
  config.eval.pgd_steps = 2
  config.test.num_examples = 32
  config.test.batch_size = 32
  config.test.pgd_steps = 2
  config.checkpoint.every_steps = 3
  config.log_every_steps = 3
  config.generator.width = 8
  config.generator.steps = 2
  return config


def tiny_mnist_config_flags() -> list[str]:
  """train.py flags that turn configs/mnist.py:smoke into make_tiny_mnist_config() (every
  field that differs), so that a train.py process compiles exactly the tiny runs' programs
  and reads them from the suite's compilation cache."""
  from configs import mnist
  tiny, smoke = make_tiny_mnist_config().to_dict(), mnist.get_config('smoke').to_dict()

  def leaves(tree, prefix=''):
    for name, value in tree.items():
      if isinstance(value, dict):
        yield from leaves(value, f'{prefix}{name}.')
      else:
        yield f'{prefix}{name}', value

  smoke_values = dict(leaves(smoke))
  return [f'--config.{name}={value}' for name, value in leaves(tiny)
          if value != smoke_values[name]]


def learnable_mnist_mock(num_examples: int = 256):
  """tfds.testing.mock_data yielding a learnable MNIST stand-in (same for every split).

  Each image is dim noise plus a bright 8x8 block whose place on a 4x3 grid is the
  label, so a LeNet-5 learns it in a few dozen steps and attacks have something to
  break; plain mock data is random labels that a short run cannot fit.
  """
  import numpy as np
  import tensorflow as tf
  import tensorflow_datasets as tfds

  def examples():
    rng = np.random.default_rng(0)
    for i in range(num_examples):
      label = i % 10
      image = rng.integers(0, 60, (28, 28, 1), dtype=np.uint8)
      row, col = divmod(label, 3)
      image[1 + 7 * row:7 + 7 * row, 2 + 9 * col:8 + 9 * col] = 255
      yield {'image': image, 'label': label}

  def as_dataset(self, *args, **kwargs):
    del args
    dataset = tf.data.Dataset.from_generator(
        examples, output_types=self.info.features.dtype,
        output_shapes=self.info.features.shape)
    batch_size = kwargs.get('batch_size')
    return dataset.batch(batch_size) if batch_size else dataset

  return tfds.testing.mock_data(as_dataset_fn=as_dataset)


SLOW_TESTS_VARIABLE = 'L2LDA_SLOW_TESTS'


def finish_processes(processes, timeout_s: float) -> None:
  """Waits for every subprocess; on a failure or a timeout kills the rest first (a peer
  of a multi-process run would wait for the dead one forever), then asserts each exited 0."""
  try:
    errors = [p.communicate(timeout=timeout_s)[1] for p in processes]
  finally:
    for p in processes:
      if p.poll() is None:
        p.kill()
  for p, stderr in zip(processes, errors):
    assert p.returncode == 0, stderr[-3000:]


def read_npz(path) -> dict:
  """Every array of a .npz file, by name, loaded (the file closed again)."""
  with np.load(path) as saved:
    return {name: saved[name] for name in saved.files}


# The files that take longest (`--durations`, docs/PERFORMANCE.md), in that order, go to the
# xdist workers first: given last, one of them ran alone at the end while the other worker
# sat idle (test_data_parallel.py's 108 s after 86 s of idling).
SLOWEST_FILES = ('test_evaluate.py', 'test_train.py', 'test_data_parallel.py', 'test_l2lda.py',
                 'test_attacks.py')


def pytest_configure(config):
  config.addinivalue_line('markers', f'slow: minutes of CPU; runs only with {SLOW_TESTS_VARIABLE}=1')
  if hasattr(config.option, 'loadscopereorder'):
    # xdist's --dist loadfile would hand out the files with most tests first instead.
    config.option.loadscopereorder = False


def _slowest_first(item) -> int:
  name = os.path.basename(str(item.path))
  return SLOWEST_FILES.index(name) if name in SLOWEST_FILES else len(SLOWEST_FILES)


def pytest_collection_modifyitems(config, items):
  """The slowest files first (a stable sort: each file's tests keep their order). Tests
  marked slow (several processes, each compiling a whole training run) run only when asked,
  so the README's test command stays within CI's time; the summary names them."""
  items.sort(key=_slowest_first)
  if os.environ.get(SLOW_TESTS_VARIABLE) == '1':
    return
  skip = pytest.mark.skip(reason=f'slow: run with {SLOW_TESTS_VARIABLE}=1')
  for item in items:
    if 'slow' in item.keywords:
      item.add_marker(skip)


def pytest_terminal_summary(terminalreporter):
  """Say which tests were skipped and why, even under -q: without the test-only packages
  the export and torchattacks-agreement tests skip, and a bare count would hide that."""
  skipped = terminalreporter.stats.get('skipped', [])
  if not skipped:
    return
  reasons = {}
  for report in skipped:
    reason = report.longrepr[-1] if isinstance(report.longrepr, tuple) else str(report.longrepr)
    reasons.setdefault(reason.removeprefix('Skipped: '), []).append(report.nodeid)
  terminalreporter.write_line(f'{len(skipped)} test(s) skipped:', yellow=True)
  for reason, ids in sorted(reasons.items()):
    terminalreporter.write_line(f'  {len(ids)} x {reason}', yellow=True)
  if any('torch' in reason for reason in reasons):
    terminalreporter.write_line('  the test-only packages: pip install torch==2.13.0 && '
                                'pip install --no-deps torchattacks==3.5.1', yellow=True)
