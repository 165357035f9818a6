"""Training in processes of its own: a run, its checkpoints and its evaluation on 8 devices
equal those on 1, and a run killed with SIGKILL resumes to the same state.

The 8 devices are XLA:CPU host devices (`--xla_force_host_platform_device_count=8`), in
their own process (the device count is fixed when JAX starts). The batch is sharded over
the ('data',) mesh and the state replicated, so every statistic of the step (the losses'
batch means, the generator's conditional BatchNorm) is over the global batch: only the
order of the floating-point sums may differ. Processes that do not depend on each other
run at once; the tiny runs are trained once per module and shared (the uninterrupted
1-device L2L-DA run is the reference of both the 8-device and the SIGKILL test).
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import TEST_XLA_FLAGS, finish_processes, read_npz

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HARNESS = os.path.join(ROOT, 'tests', 'resume_harness.py')
EVALUATE_HARNESS = os.path.join(ROOT, 'tests', 'evaluate_harness.py')
DEVICES = 8
TIMEOUT_S = 1800  # per process: minutes of compiling on a 2-core machine shared with others
PGD_STEPS = 8  # checkpoints 6 and 8 are kept (every 2, keep 2)
RESUME_STEP = PGD_STEPS - 2
# The harness's short run: step 0 clean, then seven game steps on both networks (the
# learning rate decays at step 4), a checkpoint every 2 steps, two kept. Its whole 24-step
# run compiles the same programs and took 1.4x the CPU time.
L2LDA_STEPS = 8
KILL_AFTER_CHECKPOINT = 4  # with four slowed steps and the final test still to go
KILLED_STEP_DELAY_S = 0.2
# The evaluated classifier: trained without attacks on learnable mock data, so that the
# attacks break some examples and not others (a pgd run this short learns nothing).
EVAL_MODEL_OPTIONS = ('steps=80', 'data=learnable', 'learning_rate=0.05')
EVAL_FLAGS = ('--mock=learnable', '--attacks=clean,fgsm,pgd3', '--num_examples=48',
              '--batch_size=20',  # not a multiple of 8: padded to 24 on 8 devices
              '--checkpoint=latest', '--progress=false')


# ----------------------------------------------------------------------------- processes
def _env(devices: int) -> dict:
  return dict(os.environ, JAX_PLATFORMS='cpu',
              XLA_FLAGS=f'{TEST_XLA_FLAGS} --xla_force_host_platform_device_count={devices}')


def _start(script: str, devices: int, *args) -> subprocess.Popen:
  return subprocess.Popen([sys.executable, script, *map(str, args)], env=_env(devices),
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _train(workdir, devices: int, method: str, *options, step_delay_s: float = 0
           ) -> subprocess.Popen:
  return _start(HARNESS, devices, workdir, method, step_delay_s, *options)


def _kill_once_saved(process: subprocess.Popen, workdir, step: int, timeout_s: float) -> None:
  """SIGKILLs `process` as soon as its checkpoint `step` exists."""
  deadline = time.time() + timeout_s
  while not (workdir / 'checkpoints' / str(step)).exists():
    assert process.poll() is None, process.stderr.read()[-2000:]
    assert time.time() < deadline, f'no checkpoint {step} appeared'
    time.sleep(0.05)
  process.send_signal(signal.SIGKILL)
  process.wait()


# ----------------------------------------------------------------------------- reading runs
def _results(workdir) -> dict:
  with open(os.path.join(workdir, 'results.json')) as f:
    return json.load(f)


def _final_state(workdir, devices: int) -> dict:
  assert _results(workdir)['devices'] == devices  # the run really was spread over them
  return read_npz(os.path.join(workdir, 'final_params.npz'))


def _saved_checkpoint(workdir, step: int) -> dict:
  """Checkpoint `step` as saved, read without a template in this process (1 device, unless
  XLA_FLAGS says otherwise), named as in resumed_state.npz."""
  import resume_harness  # noqa: E402  (imports JAX: only in the tests that need it)
  from l2lda_jax import checkpoint
  checkpoints = checkpoint.Checkpoints(str(workdir), keep=2)
  try:
    return resume_harness.flat_state(checkpoints.read(str(step)).tree, simple_names=True)
  finally:
    checkpoints.close()


def _assert_states_close(got: dict, expected: dict) -> None:
  assert sorted(got) == sorted(expected)
  for name in expected:
    np.testing.assert_allclose(got[name], expected[name], rtol=1e-4, atol=1e-5, err_msg=name)


# ----------------------------------------------------------------------------- training
@pytest.fixture(scope='module')
def l2lda_runs(tmp_path_factory) -> dict:
  """Workdirs of L2LDA_STEPS-step L2L-DA runs on random mock data: 'one' (1 device),
  'many' (8 devices), and 'killed' (1 device, SIGKILLed once checkpoint
  KILL_AFTER_CHECKPOINT exists, then run again to its end). The victim and the 8-device run
  go first; the resumed and the uninterrupted 1-device run then read the victim's compiled
  programs from the suite's compilation cache."""
  root = tmp_path_factory.mktemp('l2lda')
  workdirs = {name: root / name for name in ('one', 'many', 'killed')}
  steps = f'steps={L2LDA_STEPS}'
  many = _train(workdirs['many'], DEVICES, 'l2lda', steps)
  victim = _train(workdirs['killed'], 1, 'l2lda', steps, step_delay_s=KILLED_STEP_DELAY_S)
  try:
    _kill_once_saved(victim, workdirs['killed'], KILL_AFTER_CHECKPOINT, TIMEOUT_S)
  except BaseException:
    many.kill()
    raise
  assert not (workdirs['killed'] / 'final_params.npz').exists()  # it really died mid-run
  finish_processes([many, _train(workdirs['killed'], 1, 'l2lda', steps),
                    _train(workdirs['one'], 1, 'l2lda', steps)], TIMEOUT_S)
  return workdirs


@pytest.mark.parametrize('devices', [DEVICES])
def test_an_l2lda_run_on_8_devices_equals_the_run_on_1(devices, l2lda_runs):
  expected = _final_state(l2lda_runs['one'], 1)
  assert int(expected["['step']"]) == L2LDA_STEPS
  generator_stats = [name for name in expected if 'generator' in name and 'batch_stats' in name]
  assert generator_stats  # the conditional BN statistics are compared too
  _assert_states_close(_final_state(l2lda_runs['many'], devices), expected)


# L2L-DA only: its state (two networks, two optimisers, BN statistics) covers pgd's, whose
# resume tests/test_train.py checks in-process.
def test_sigkill_then_resume_equals_the_uninterrupted_run(l2lda_runs):
  assert _results(l2lda_runs['killed'])['resumed_from_step'] >= KILL_AFTER_CHECKPOINT
  resumed, whole = _final_state(l2lda_runs['killed'], 1), _final_state(l2lda_runs['one'], 1)
  assert sorted(resumed) == sorted(whole)
  for name in whole:  # the same programs on the same device: bit-identical
    np.testing.assert_array_equal(resumed[name], whole[name], err_msg=name)


@pytest.fixture(scope='module')
def runs(tmp_path_factory) -> dict:
  """Workdirs, trained at once: 'pgd on 1' and 'pgd on 8' (PGD_STEPS each, random mock
  data), and 'eval model' (1 device, EVAL_MODEL_OPTIONS)."""
  root = tmp_path_factory.mktemp('runs')
  workdirs = {name: root / name.replace(' ', '_')
              for name in ('pgd on 1', 'pgd on 8', 'eval model')}
  finish_processes([_train(workdirs['pgd on 1'], 1, 'pgd', f'steps={PGD_STEPS}'),
                    _train(workdirs['pgd on 8'], DEVICES, 'pgd', f'steps={PGD_STEPS}'),
                    _train(workdirs['eval model'], 1, 'plain', *EVAL_MODEL_OPTIONS)],
                   TIMEOUT_S)
  return workdirs


def test_a_pgd_run_on_8_devices_equals_the_run_on_1(runs):
  expected = _final_state(runs['pgd on 1'], 1)
  # pgd's LeNet-5 has no BatchNorm: its state is parameters, momentum and step.
  assert any('trace' in name for name in expected) and "['step']" in expected
  assert int(expected["['step']"]) == PGD_STEPS
  _assert_states_close(_final_state(runs['pgd on 8'], DEVICES), expected)


# ----------------------------------------------------------------------------- checkpoints
DIRECTIONS = {'8 -> 1': ('pgd on 8', 1), '1 -> 8': ('pgd on 1', DEVICES)}


@pytest.fixture(scope='module')
def resumed(runs, tmp_path_factory) -> dict:
  """Direction -> a workdir holding only checkpoint RESUME_STEP of the run on the other
  device count, trained on to PGD_STEPS (both directions at once)."""
  root = tmp_path_factory.mktemp('resumed')
  workdirs, processes = {}, []
  for direction, (source, devices) in DIRECTIONS.items():
    workdir = root / direction.replace(' -> ', '_to_')
    shutil.copytree(runs[source] / 'checkpoints' / str(RESUME_STEP),
                    workdir / 'checkpoints' / str(RESUME_STEP))
    workdirs[direction] = workdir
    processes.append(_train(workdir, devices, 'pgd', f'steps={PGD_STEPS}', 'dump_resumed=1'))
  finish_processes(processes, TIMEOUT_S)
  return workdirs


@pytest.mark.parametrize('direction', sorted(DIRECTIONS))
def test_a_checkpoint_restores_and_resumes_on_another_device_count(direction, runs, resumed):
  import resume_harness  # noqa: E402  (imports JAX: only in the tests that need it)
  source, devices = DIRECTIONS[direction]
  workdir = resumed[direction]
  assert _results(workdir)['resumed_from_step'] == RESUME_STEP

  restored = read_npz(workdir / 'resumed_state.npz')
  # Restored onto every device of the new count, each array replicated.
  assert set(restored.pop(resume_harness.DEVICES_KEY)) == {devices}
  saved = _saved_checkpoint(runs[source], RESUME_STEP)
  assert sorted(restored) == sorted(saved)
  for name in saved:  # a restore is a copy of the bytes: exactly equal
    np.testing.assert_array_equal(restored[name], saved[name], err_msg=name)

  # Trained on from there, it ends where the uninterrupted run on that device count did.
  final = _final_state(workdir, devices)
  assert int(final["['step']"]) == PGD_STEPS
  _assert_states_close(final, _final_state(runs[f'pgd on {devices}'], devices))


# ----------------------------------------------------------------------------- evaluation
def _evaluate(workdir, devices: int, output) -> subprocess.Popen:
  return _start(EVALUATE_HARNESS, devices, f'--workdir={workdir}', f'--output={output}',
                *EVAL_FLAGS)


def _correct_by_attack(report: dict) -> dict:
  from l2lda_jax import robustness  # noqa: E402  (imports JAX)
  return {name: robustness.unpack_correct(bits, report['num_examples'])
          for name, bits in report['per_example_correct'].items()}


def test_the_evaluation_table_on_8_devices_equals_the_one_on_1(runs, tmp_path):
  """evaluate.py of a 1-device run's checkpoint on 1 and on 8 devices, same seed: the same
  examples survive each attack. On 8 it restores the checkpoint onto all 8 devices and
  pads its batches of 20 to 24."""
  outputs = {devices: tmp_path / f'evaluation_{devices}.json' for devices in (1, DEVICES)}
  finish_processes([_evaluate(runs['eval model'], devices, output)
                    for devices, output in outputs.items()], TIMEOUT_S)
  reports = {}
  for devices, output in outputs.items():
    with open(output) as f:
      reports[devices] = json.load(f)
    assert reports[devices]['device_count'] == devices and reports[devices]['complete']
  one, many = reports[1], reports[DEVICES]

  correct = _correct_by_attack(one)
  assert list(correct) == ['clean', 'fgsm', 'pgd3'] and one['num_examples'] == 48
  clean = correct['clean'].mean()
  for name in ('fgsm', 'pgd3'):  # the attacks break some examples, not all
    assert 0 < correct[name].mean() < clean, (name, correct[name].mean(), clean)
  assert many['per_example_correct'] == one['per_example_correct']
  assert [(r['attack'], r['accuracy']) for r in many['rows']] == [
      (r['attack'], r['accuracy']) for r in one['rows']]
  assert many['worst_case_accuracy'] == one['worst_case_accuracy']
