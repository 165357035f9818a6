"""Trains a classifier: python train.py --config=configs/mnist.py --workdir=DIR.

An existing workdir resumes from its latest checkpoint. Override any config field,
e.g. --config.method=pgd --config.train.steps=2000.
"""

import sys

from absl import app, flags, logging
from ml_collections import config_flags

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file('config', 'configs/mnist.py', 'Training config file.',
                                lock_config=True)
flags.DEFINE_string('workdir', None, 'Directory for checkpoints, logs and results.')
flags.mark_flags_as_required(['workdir'])


class _QuietLibraries:
  """Drops orbax's per-save INFO chatter so the progress lines stay readable."""

  def filter(self, record):
    return record.levelno >= 30 or 'orbax' not in record.pathname


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  logging.get_absl_handler().addFilter(_QuietLibraries())
  from l2lda_jax import host_memory
  host_memory.keep_freed_memory()  # before JAX or TensorFlow start threads
  from l2lda_jax import train
  from l2lda_jax.checkpoint import CheckpointError
  from l2lda_jax.config_validation import ConfigError
  from l2lda_jax.data import DataError
  try:
    train.train_and_evaluate(FLAGS.config, FLAGS.workdir)
  except (ConfigError, DataError, train.TrainingDiverged, CheckpointError) as e:
    sys.exit(f'error: {e}')


if __name__ == '__main__':
  app.run(main)
