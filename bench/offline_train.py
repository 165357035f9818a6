"""Run train.py on a machine without TensorFlow, from a snapshot saved by offline_data.py.

  python bench/offline_data.py save --config=configs/mnist.py --snapshot=mnist.npz   # here
  python bench/offline_train.py --snapshot=mnist.npz --config=configs/mnist.py:cpu \
      --workdir=RUN [--config.FIELD=VALUE ...]                                         # there

Every train.py flag passes through unchanged; only the data comes from the snapshot.
"""

import os
import sys

from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import train  # noqa: E402  (defines train.py's flags)
from bench.snapshot import read_from_snapshot  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string('snapshot', None, 'The .npz snapshot of the splits.')
flags.mark_flags_as_required(['snapshot'])


def main(argv):
  read_from_snapshot(FLAGS.snapshot)
  train.main(argv)


if __name__ == '__main__':
  app.run(main)
