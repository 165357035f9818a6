"""Data parallelism: the same L2L-DA run on 1 and on 8 devices ends with the same state.

The 8 devices are XLA:CPU host devices (`--xla_force_host_platform_device_count=8`), in
their own process (the device count is fixed when JAX starts). The batch is sharded over
the ('data',) mesh and the state replicated, so every statistic of the step (the losses'
batch means, the generator's conditional BatchNorm) is over the global batch: only the
order of the floating-point sums may differ.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HARNESS = os.path.join(ROOT, 'tests', 'resume_harness.py')
# The harness's short run: step 0 clean, steps 1-3 the L2L-DA game (both networks and the
# generator's BN statistics move), a checkpoint at 2 and 4, one validation. The claim does
# not depend on the length, and each device count compiles its own program anyway.
STEPS = 4


def _start(workdir, devices: int) -> subprocess.Popen:
  env = dict(os.environ, JAX_PLATFORMS='cpu',
             XLA_FLAGS=f'--xla_force_host_platform_device_count={devices}')
  return subprocess.Popen([sys.executable, HARNESS, str(workdir), 'l2lda', '0',
                           f'steps={STEPS}'], env=env, stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, text=True)


def _finish(runs: dict) -> dict:
  """{devices: final state} of the started runs; on a failure the others are killed."""
  try:
    # Each run had 600 s alone; at once they share the CPU, and so the time.
    errors = {n: process.communicate(timeout=1200)[1] for n, (process, _) in runs.items()}
  finally:
    for process, _ in runs.values():
      if process.poll() is None:
        process.kill()
  states = {}
  for n, (process, workdir) in runs.items():
    assert process.returncode == 0, errors[n][-2000:]
    with open(os.path.join(workdir, 'results.json')) as f:
      report = json.load(f)
    assert report['devices'] == n  # the run really was spread over them
    assert report['steps'] == STEPS
    with np.load(os.path.join(workdir, 'final_params.npz')) as saved:
      states[n] = {name: saved[name] for name in saved.files}
  return states


@pytest.mark.parametrize('devices', [8])
def test_an_l2lda_run_on_8_devices_equals_the_run_on_1(devices, tmp_path):
  # Both runs at once: independent processes that share no compiled program.
  states = _finish({n: (_start(tmp_path / str(n), n), tmp_path / str(n))
                    for n in (1, devices)})
  one, many = states[1], states[devices]
  assert sorted(one) == sorted(many)
  assert int(one["['step']"]) == STEPS
  generator_stats = [name for name in one if 'generator' in name and 'batch_stats' in name]
  assert generator_stats  # the conditional BN statistics are compared too
  for name in one:
    np.testing.assert_allclose(many[name], one[name], rtol=1e-4, atol=1e-5, err_msg=name)
