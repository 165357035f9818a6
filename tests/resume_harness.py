"""Runs train_and_evaluate on mock MNIST in its own process, for the SIGKILL test.

  python tests/resume_harness.py WORKDIR METHOD STEP_DELAY_SECONDS

Writes the final checkpoint's whole state to WORKDIR/final_params.npz when training ends. STEP_DELAY_SECONDS slows each
step down so the test can kill the process in the middle of the run.
"""

import os
import sys
import time

import jax
import numpy as np
import tensorflow_datasets as tfds

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from configs import mnist  # noqa: E402
from l2lda_jax import data as data_lib  # noqa: E402
from l2lda_jax import train  # noqa: E402


def harness_config(method: str):
  config = mnist.get_config('smoke')
  config.method = method
  config.data.manual_dir = ''
  config.data.validation_size = 32
  config.train.steps = 24
  config.train.batch_size = 16
  config.train.clean_warmup_steps = 3
  config.train.lr_decay_steps = (12,)
  config.attack.pgd_steps = 2
  config.attack.cw_steps = 2
  config.eval.every_steps = 8
  config.eval.num_examples = 32
  config.eval.batch_size = 32
  config.eval.pgd_steps = 1
  config.test.num_examples = 32
  config.test.batch_size = 32
  config.test.pgd_steps = 1
  config.checkpoint.every_steps = 4
  config.checkpoint.keep = 2
  config.log_every_steps = 4
  config.generator.width = 8
  config.generator.steps = 2
  return config


def main():
  workdir, method, delay = sys.argv[1], sys.argv[2], float(sys.argv[3])
  if delay > 0:
    indices = data_lib.batch_indices

    def slow_indices(*args):
      time.sleep(delay)
      return indices(*args)

    data_lib.batch_indices = slow_indices
  with tfds.testing.mock_data(num_examples=96):
    train.train_and_evaluate(harness_config(method), workdir)
  state = train.checkpoint_lib.Checkpoints(workdir, keep=2)
  # Everything: classifier, optimiser and (for l2lda) generator state.
  restored = state.latest.restore(state.latest_step())
  flat = {jax.tree_util.keystr(k): np.asarray(v)
          for k, v in jax.tree_util.tree_leaves_with_path(restored)}
  np.savez(os.path.join(workdir, 'final_params.npz'), **flat)


if __name__ == '__main__':
  main()
