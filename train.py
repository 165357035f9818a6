"""Trains a classifier: python train.py --config=configs/mnist.py --workdir=DIR.

An existing workdir resumes from its latest checkpoint. Override any config field,
e.g. --config.method=pgd --config.train.steps=2000.

Several hosts: run the same command on each, with --coordinator_address, --num_processes
and --process_id (or under Slurm, Open MPI or on a Cloud TPU slice, which set them; see
README). The workdir must be one folder that every process sees.
"""

import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file('config', 'configs/mnist.py', 'Training config file.',
                                lock_config=True)
flags.DEFINE_string('workdir', None, 'Directory for checkpoints, logs and results.')
flags.DEFINE_boolean('verbose', False, 'Also print the libraries\' INFO lines (TFDS, orbax, '
                     'JAX, TensorFlow).')
flags.DEFINE_enum('distributed', 'auto', ['auto', 'on', 'off'],
                  'Multi-process run (jax.distributed.initialize): auto = when the three flags '
                  'below or a launcher\'s variables (JAX_COORDINATOR_ADDRESS, Slurm, Open MPI, '
                  'Cloud TPU on GKE) ask for it; on = always, JAX detecting what is unset '
                  '(Cloud TPU VM slices); off = one process.')
flags.DEFINE_string('coordinator_address', '', 'host:port of process 0, the same on every '
                    'process (multi-process runs).')
flags.DEFINE_integer('num_processes', None, 'Number of processes of a multi-process run.')
flags.DEFINE_integer('process_id', None, 'This process\'s index, 0 .. --num_processes - 1.')
flags.mark_flags_as_required(['workdir'])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  from l2lda_jax import console
  console.quiet_libraries(FLAGS.verbose)
  from l2lda_jax import host_memory
  host_memory.keep_freed_memory()  # before JAX or TensorFlow start threads
  from l2lda_jax import distributed
  try:  # before any JAX computation
    arguments = distributed.initialization_arguments(
        FLAGS.distributed, FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id,
        os.environ)
    distributed.initialize(arguments)
  except distributed.DistributedError as e:
    sys.exit(f'error: {e}')
  if arguments is not None and not distributed.is_main_process():
    logging.set_verbosity(logging.ERROR)  # process 0 logs for all
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
