"""Trains a classifier: python train.py --config=configs/mnist.py --workdir=DIR.

An existing workdir resumes from its latest checkpoint. Override any config field,
e.g. --config.method=pgd --config.train.steps=2000.
"""

import sys

from absl import app, flags
from ml_collections import config_flags

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file('config', 'configs/mnist.py', 'Training config file.',
                                lock_config=True)
flags.DEFINE_string('workdir', None, 'Directory for checkpoints, logs and results.')
flags.DEFINE_boolean('verbose', False, 'Also print the libraries\' INFO lines (TFDS, orbax, '
                     'JAX, TensorFlow).')
flags.mark_flags_as_required(['workdir'])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  from l2lda_jax import console
  console.quiet_libraries(FLAGS.verbose)
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
