"""Runs train_and_evaluate on mock MNIST in its own process, for the SIGKILL, multi-host and
data-parallel tests.

  python tests/resume_harness.py WORKDIR METHOD STEP_DELAY_SECONDS [steps=N]
      [data=learnable] [learning_rate=LR] [dump_resumed=1]
      [coordinator_address=HOST:PORT num_processes=N process_id=I]

Writes the final checkpoint's whole state to WORKDIR/final_params.npz when training ends. STEP_DELAY_SECONDS slows each
step down so the test can kill the process in the middle of the run. steps=N shortens the
run (a checkpoint every 2 steps, validation at the end only); the coordinator options make
it one process of a jax.distributed run, initialised as train.py does. data=learnable trains
on conftest's learnable mock (tests/evaluate_harness.py --mock=learnable reads it too), so
that attacks have something to break (with learning_rate=0.05, in 80 steps);
dump_resumed=1 writes the state the run resumed from, as restored onto this process's
devices, to WORKDIR/resumed_state.npz.
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
from l2lda_jax import distributed  # noqa: E402
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


def short_config(config, steps: int):
  """`config` cut to `steps` steps: 1 clean warm-up step, saves every 2, one validation."""
  config.train.steps = steps
  config.train.clean_warmup_steps = 1
  config.train.lr_decay_steps = (max(steps // 2, 1),)
  config.checkpoint.every_steps = 2
  config.log_every_steps = 2
  config.eval.every_steps = steps
  return config


DEVICES_KEY = 'devices holding each array'  # in resumed_state.npz, beside the state


def mock_data(kind: str):
  """TFDS's mock MNIST (random images and labels), or conftest's learnable stand-in."""
  if kind == 'learnable':
    from conftest import learnable_mnist_mock  # tests/ is this script's folder
    return learnable_mnist_mock()
  return tfds.testing.mock_data(num_examples=96)


def flat_state(tree, simple_names: bool = False) -> dict:
  """Every array of `tree` as numpy, by its path: "['params']['fc2']['bias']", or with
  `simple_names` 'params/fc2/bias', the same for a TrainState and for the nested dicts of
  a checkpoint read without a template."""
  def name(path):
    return (jax.tree_util.keystr(path, simple=True, separator='/') if simple_names
            else jax.tree_util.keystr(path))

  return {name(k): np.asarray(v) for k, v in jax.tree_util.tree_leaves_with_path(tree)}


def dump_resumed_state(workdir: str) -> None:
  """Makes training's resume also write the state it restored, with the number of devices
  each array is on (key DEVICES_KEY), to WORKDIR/resumed_state.npz."""
  resume = train.checkpoint_lib.Checkpoints.resume

  def resume_and_dump(self, template):
    state, step = resume(self, template)
    if step is not None and jax.process_index() == 0:
      devices = [len(leaf.sharding.device_set) for leaf in jax.tree_util.tree_leaves(state)]
      np.savez(os.path.join(workdir, 'resumed_state.npz'), **flat_state(state, True),
               **{DEVICES_KEY: np.array(devices)})
    return state, step

  train.checkpoint_lib.Checkpoints.resume = resume_and_dump


def main():
  workdir, method, delay = sys.argv[1], sys.argv[2], float(sys.argv[3])
  options = dict(arg.split('=', 1) for arg in sys.argv[4:])
  distributed.initialize(distributed.initialization_arguments(
      'auto', options.get('coordinator_address', ''),
      int(options['num_processes']) if 'num_processes' in options else None,
      int(options['process_id']) if 'process_id' in options else None, {}))
  config = harness_config(method)
  if 'steps' in options:
    config = short_config(config, int(options['steps']))
  if 'learning_rate' in options:
    config.train.learning_rate = float(options['learning_rate'])
  if delay > 0:
    indices = data_lib.batch_indices

    def slow_indices(*args):
      time.sleep(delay)
      return indices(*args)

    data_lib.batch_indices = slow_indices
  if options.get('dump_resumed') == '1':
    dump_resumed_state(workdir)
  with mock_data(options.get('data', 'random')):
    train.train_and_evaluate(config, workdir)
  state = train.checkpoint_lib.Checkpoints(workdir, keep=2)
  # Everything: classifier, optimiser and (for l2lda) generator state.
  restored = state.latest.restore(state.latest_step())
  if jax.process_index() == 0:  # every process restores (orbax is collective); one writes
    np.savez(os.path.join(workdir, 'final_params.npz'), **flat_state(restored))


if __name__ == '__main__':
  main()
