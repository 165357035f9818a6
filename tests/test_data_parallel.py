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


def _run(workdir, devices: int) -> dict:
  env = dict(os.environ, JAX_PLATFORMS='cpu',
             XLA_FLAGS=f'--xla_force_host_platform_device_count={devices}')
  result = subprocess.run([sys.executable, HARNESS, str(workdir), 'l2lda', '0'], env=env,
                          capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-2000:]
  with open(os.path.join(workdir, 'results.json')) as f:
    assert json.load(f)['devices'] == devices  # the run really was spread over them
  with np.load(os.path.join(workdir, 'final_params.npz')) as saved:
    return {name: saved[name] for name in saved.files}


@pytest.mark.parametrize('devices', [8])
def test_an_l2lda_run_on_8_devices_equals_the_run_on_1(devices, tmp_path):
  one = _run(tmp_path / 'one', 1)
  many = _run(tmp_path / 'many', devices)
  assert sorted(one) == sorted(many)
  generator_stats = [name for name in one if 'generator' in name and 'batch_stats' in name]
  assert generator_stats  # the conditional BN statistics are compared too
  for name in one:
    np.testing.assert_allclose(many[name], one[name], rtol=1e-4, atol=1e-5, err_msg=name)
