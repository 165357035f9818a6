"""Run evaluate.py on a machine without TensorFlow, from a snapshot of the loaded splits.

The lent GPU machines have JAX but neither TensorFlow nor TFDS, and no network. This saves
the train/validation/test splits exactly as `data.load_dataset` returns them here, and on
the other machine runs evaluate.py with `load_dataset` reading that snapshot instead:

  python bench/offline_data.py save --config=configs/mnist.py --snapshot=mnist.npz
  python bench/offline_data.py evaluate --snapshot=mnist.npz --workdir=RUN --attacks=...

Every other evaluate.py flag passes through unchanged.
"""

import os
import sys

from absl import app, flags
from ml_collections import config_flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import evaluate  # noqa: E402  (defines evaluate.py's flags)
from bench.snapshot import read_from_snapshot, save_snapshot  # noqa: E402
from l2lda_jax import data as data_lib  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string('snapshot', None, 'The .npz snapshot of the splits.')
config_flags.DEFINE_config_file('config', 'configs/mnist.py',
                                'Config whose `data` section to load (save only).')


def main(argv):
  if len(argv) != 2 or argv[1] not in ('save', 'evaluate'):
    raise app.UsageError('usage: offline_data.py save|evaluate --snapshot=PATH [flags]')
  if argv[1] == 'save':
    save_snapshot(data_lib.load_dataset(FLAGS.config.data), FLAGS.snapshot)
    return
  read_from_snapshot(FLAGS.snapshot)
  evaluate.main(argv[:1])


if __name__ == '__main__':
  flags.mark_flags_as_required(['snapshot'])
  if 'save' in sys.argv[1:]:
    FLAGS.set_default('workdir', '')  # evaluate.py requires it; saving needs no run
  app.run(main)
