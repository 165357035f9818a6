"""Runs evaluate.py on mock MNIST in its own process, for the data-parallel tests.

  python tests/evaluate_harness.py --workdir=DIR --output=REPORT.json [--mock=learnable]
      [evaluate.py's other flags]

evaluate.py itself, its flags unchanged, on the mock data tests/resume_harness.py trained on
(--mock as its data=). A test starts it with the XLA:CPU device count it wants (fixed when
JAX starts, hence the process).
"""

import os
import sys

from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import evaluate  # noqa: E402  (defines evaluate.py's flags)
import resume_harness  # noqa: E402  (tests/, this script's folder)

flags.DEFINE_enum('mock', 'random', ['random', 'learnable'], 'resume_harness.py\'s data=.')


def main(argv):
  with resume_harness.mock_data(flags.FLAGS.mock):
    evaluate.main(argv)


if __name__ == '__main__':
  app.run(main)
