"""Multi-process runs: two jax.distributed processes on localhost end with the 1-process state.

The two processes (tests/resume_harness.py, one CPU device each, gloo collectives) resume a
1-process run's checkpoint, so orbax restores it into the state sharded over both, then
train the remaining L2L-DA game steps, each process putting only its half of every batch on
its device. Every statistic of the step is over the global batch, so the final state equals
the uninterrupted 1-process run's up to the order of floating-point sums.
"""

import glob
import json
import os
import shutil
import socket
import subprocess
import sys

import numpy as np
import pytest

from conftest import TEST_XLA_FLAGS, finish_processes, read_npz
from l2lda_jax import distributed

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HARNESS = os.path.join(ROOT, 'tests', 'resume_harness.py')
STEPS = 4  # step 0 clean, steps 1-3 the game; checkpoints at 2 and 4
TIMEOUT_S = 900  # per process: the two peers compile the training loop side by side


# ----------------------------------------------------------------------------- when to start
def test_one_process_unless_asked():
  assert distributed.initialization_arguments('auto', '', None, None, {}) is None
  one_task = {'SLURM_JOB_ID': '7', 'SLURM_NTASKS': '1'}  # a 1-task job is one process
  assert distributed.initialization_arguments('auto', '', None, None, one_task) is None
  assert distributed.initialization_arguments('off', '', None, None,
                                              {'JAX_COORDINATOR_ADDRESS': 'h:1'}) is None


@pytest.mark.parametrize('environ', [
    {'JAX_COORDINATOR_ADDRESS': '10.0.0.1:1234'},
    {'SLURM_JOB_ID': '7', 'SLURM_NTASKS': '4'},
    {'OMPI_MCA_orte_hnp_uri': 'x', 'OMPI_COMM_WORLD_SIZE': '2'},
    {'TPU_WORKER_HOSTNAMES': 'host-0,host-1'},
])
def test_a_launchers_variables_ask_for_jax_detection(environ):
  assert distributed.initialization_arguments('auto', '', None, None, environ) == {}


def test_flags_are_passed_and_on_always_initialises():
  assert distributed.initialization_arguments('auto', 'localhost:1234', 2, 1, {}) == dict(
      coordinator_address='localhost:1234', num_processes=2, process_id=1)
  assert distributed.initialization_arguments('on', '', None, None, {}) == {}


@pytest.mark.parametrize('flags, message', [
    (('auto', 'localhost', 2, 0), "--coordinator_address: 'localhost' must be host:port"),
    (('auto', 'h:70000', 2, 0), '--coordinator_address: port 70000 must be in'),
    (('auto', 'h:1', 0, None), '--num_processes: 0 must be >= 1'),
    (('auto', 'h:1', None, -1), '--process_id: -1 must be >= 0'),
    (('auto', 'h:1', 2, 2), r'--process_id: 2 must be < --num_processes \(2\)'),
    (('off', '', 2, None), '--num_processes: set, but --distributed=off'),
])
def test_bad_values_name_the_flag(flags, message):
  with pytest.raises(distributed.DistributedError, match=message):
    distributed.initialization_arguments(*flags, {})


def test_cli_rejects_a_bad_process_id_with_one_line(tmp_path):
  result = subprocess.run(
      [sys.executable, 'train.py', '--config=configs/mnist.py:smoke', f'--workdir={tmp_path}',
       '--coordinator_address=localhost:1234', '--num_processes=2', '--process_id=2'],
      cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert result.returncode == 1
  assert 'Traceback' not in result.stderr
  assert result.stderr.strip().splitlines()[-1] == (
      'error: --process_id: 2 must be < --num_processes (2)')
  assert not os.listdir(tmp_path)  # stopped before any work


# ----------------------------------------------------------------------------- two processes
def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('localhost', 0))
    return s.getsockname()[1]


def _harness(workdir, *options) -> subprocess.Popen:
  # One CPU device per process: the suite's flags without a device count.
  env = dict(os.environ, JAX_PLATFORMS='cpu', XLA_FLAGS=TEST_XLA_FLAGS)
  return subprocess.Popen([sys.executable, HARNESS, str(workdir), 'l2lda', '0',
                           f'steps={STEPS}', *options], env=env, stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, text=True)


def _final_state(workdir) -> dict:
  return read_npz(os.path.join(workdir, 'final_params.npz'))


def _checkpoint_params(workdir, step: int) -> dict:
  """The classifier and generator parameters of checkpoint `step`, keyed as final_params."""
  import jax
  from l2lda_jax import checkpoint
  checkpoints = checkpoint.Checkpoints(str(workdir), keep=2)
  restored = checkpoints.latest.restore(step)
  checkpoints.close()
  flat = {jax.tree_util.keystr(k): np.asarray(v)
          for k, v in jax.tree_util.tree_leaves_with_path(restored)}
  return {name: value for name, value in flat.items() if "['params']" in name}


@pytest.mark.slow  # ~2 minutes on 2 idle cores: three processes compile the training loop
def test_two_processes_resume_and_end_with_the_one_process_state(tmp_path):
  one, two = tmp_path / 'one', tmp_path / 'two'
  finish_processes([_harness(one)], TIMEOUT_S)
  # The 2-process run starts from the 1-process run's step-2 checkpoint.
  shutil.copytree(one / 'checkpoints' / '2', two / 'checkpoints' / '2')
  address = f'localhost:{_free_port()}'
  finish_processes([_harness(two, f'coordinator_address={address}', 'num_processes=2',
                            f'process_id={i}') for i in (1, 0)], TIMEOUT_S)

  with open(two / 'results.json') as f:
    report = json.load(f)
  assert (report['processes'], report['devices'], report['resumed_from_step']) == (2, 2, 2)
  assert report['best_on_validation']['step'] == STEPS  # restored from best/ by both
  # TensorBoard events from process 0 only: one events file in the shared workdir.
  assert len(glob.glob(str(two / 'events.out.tfevents.*'))) == 1

  expected, got = _final_state(one), _final_state(two)
  assert sorted(got) == sorted(expected)
  assert int(got["['step']"]) == STEPS
  resumed = _checkpoint_params(one, 2)
  assert any(not np.allclose(got[name], resumed[name]) for name in resumed)  # it trained
  for name in expected:
    np.testing.assert_allclose(got[name], expected[name], rtol=1e-4, atol=1e-5, err_msg=name)
