"""Corrupted and half-written checkpoints: reported in one line, skipped for the newest
readable one, by training's resume and by evaluate.py / export.py's restores.

The damage is what a full disk or a dead machine leaves: a truncated data file, an emptied
_METADATA, a deleted data file, and a save killed by SIGKILL. The kill is real but placed,
not timed: a subprocess saves with orbax's finalisation (write commit_success.txt, rename
`<step>.orbax-checkpoint-tmp` to `<step>`) replaced by SIGKILL to itself, i.e. killed at the
last moment of the save, when every array and metadata file is already on disk.
"""

import glob
import os
import shutil
import signal
import subprocess
import sys

import pytest
import tensorflow_datasets as tfds

from conftest import make_tiny_mnist_config

from l2lda_jax import checkpoint as checkpoint_lib
from l2lda_jax import data as data_lib
from l2lda_jax import export, robustness, train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LOGGER = 'absl'  # checkpoint.py reports through absl's logging.warning


def _config(steps: int = 6):
  """conftest's tiny plain run: checkpoints at steps 3 and 6, all kept."""
  config = make_tiny_mnist_config()
  config.method = 'plain'
  config.train.steps = steps
  config.checkpoint.keep = 5
  return config


def _train(config, workdir) -> dict:
  with tfds.testing.mock_data(num_examples=96):
    return train.train_and_evaluate(config, str(workdir))


@pytest.fixture(scope='module')
def base_run(tmp_path_factory):
  """One finished run (checkpoints/3, checkpoints/6, best/<3 or 6>), copied by each test."""
  workdir = tmp_path_factory.mktemp('base')
  _train(_config(), workdir)
  return str(workdir)


@pytest.fixture
def run(base_run, tmp_path):
  workdir = str(tmp_path / 'run')
  shutil.copytree(base_run, workdir)
  return workdir


# ----------------------------------------------------------------------------- the damage
def _data_files(step_dir: str) -> list[str]:
  """The checkpoint's OCDBT data files (arrays' bytes), largest first."""
  files = [f for f in glob.glob(os.path.join(step_dir, 'default', '**', 'd', '*'),
                                recursive=True) if os.path.isfile(f)]
  return sorted(files, key=os.path.getsize, reverse=True)


def truncate(step_dir: str) -> None:
  """A disk that filled up during the write: the largest data file cut in half."""
  path = _data_files(step_dir)[0]
  os.truncate(path, os.path.getsize(path) // 2)


def empty_metadata(step_dir: str) -> None:
  open(os.path.join(step_dir, 'default', '_METADATA'), 'w').close()


def delete_file(step_dir: str) -> None:
  os.remove(_data_files(step_dir)[0])


DAMAGE = {'truncate': truncate, 'empty_metadata': empty_metadata, 'delete_file': delete_file}

def _damage_step(workdir: str, step: int, damage) -> list[str]:
  """Damages every copy of `step` (checkpoints/, and best/ if the best is that step: the
  newest readable is then the step before, whichever folder orbax's metrics put the best in)."""
  step_dirs = [_step_dir(workdir, slot, step) for slot in ('latest', 'best')
               if os.path.isdir(_step_dir(workdir, slot, step))]
  for step_dir in step_dirs:
    damage(step_dir)
  return step_dirs


KILL_DURING_SAVE = r'''
import os, signal, sys
sys.path.insert(0, sys.argv[2])
import orbax.checkpoint as ocp
from l2lda_jax import checkpoint as checkpoint_lib
from l2lda_jax import data as data_lib

finalize = ocp.path.atomicity.AtomicRenameTemporaryPath.finalize

async def killed(self):
  if self.get_final().name == sys.argv[3]:  # the step's rename; its item is already final
    os.kill(os.getpid(), signal.SIGKILL)
  await finalize(self)

checkpoints = checkpoint_lib.Checkpoints(sys.argv[1], keep=5)
state = checkpoints.read('latest').tree
ocp.path.atomicity.AtomicRenameTemporaryPath.finalize = killed
checkpoints.save(int(sys.argv[3]), state)
'''


def kill_during_save(workdir: str, step: int) -> None:
  """Saves `step` in a subprocess that SIGKILLs itself just before orbax finalises it."""
  result = subprocess.run([sys.executable, '-c', KILL_DURING_SAVE, workdir, ROOT, str(step)],
                          capture_output=True, text=True, timeout=300)
  assert result.returncode == -signal.SIGKILL, result.stderr[-2000:]


def _step_dir(workdir, slot, step) -> str:
  return os.path.join(workdir, checkpoint_lib.SLOT_FOLDERS[slot], str(step))


def _warnings(caplog) -> list[str]:
  return [r.getMessage() for r in caplog.records if r.levelname == 'WARNING']


def _assert_one_line_report(lines, step, path, verb):
  """Exactly one line reports the damaged checkpoint, naming its step and folder."""
  about = [line for line in lines if f'({path}) is unreadable' in line]
  assert len(about) == 1, lines
  assert f'checkpoint step {step} ({path}) is unreadable, {verb}' in about[0]
  assert '\n' not in about[0] and len(about[0]) < 400


def _assert_fell_back(lines, step, path):
  assert any(line.startswith(f'using checkpoint step {step} ({path}), the newest readable')
             for line in lines), lines


# ----------------------------------------------------------------------------- resume
@pytest.mark.parametrize('damage', sorted(DAMAGE))
def test_resume_moves_an_unreadable_latest_aside_and_trains_from_the_one_before(
    damage, run, caplog):
  damaged = _damage_step(run, 6, DAMAGE[damage])
  caplog.set_level('INFO')
  report = _train(_config(), run)
  assert report['resumed_from_step'] == 3
  lines = _warnings(caplog)
  for step_dir in damaged:
    _assert_one_line_report(lines, 6, step_dir, 'moved to 6.unreadable')
    # Moved aside (kept for inspection), so that training saves step 6 afresh.
    assert os.path.isdir(step_dir + '.unreadable')
  _assert_fell_back(lines, 3, _step_dir(run, 'latest', 3))
  checkpoints = checkpoint_lib.Checkpoints(run, keep=5)
  assert checkpoints.read('latest').step == 6
  assert checkpoints.latest.all_steps() == [3, 6]


def test_resume_after_a_kill_during_save_removes_the_unfinished_save(run, caplog):
  kill_during_save(run, 9)
  unfinished = os.path.join(run, 'checkpoints', '9' + checkpoint_lib.UNFINISHED_SUFFIX)
  # The kill came after every file was written, yet nothing looks like a checkpoint.
  for name in ('_METADATA', 'commit_success.txt'):
    assert os.path.isfile(os.path.join(unfinished, 'default', name))
  assert not os.path.exists(os.path.join(run, 'checkpoints', '9'))
  caplog.set_level('INFO')
  report = _train(_config(steps=9), run)
  assert report['resumed_from_step'] == 6
  lines = _warnings(caplog)
  about = [line for line in lines if unfinished in line]
  assert about == [f'removing an unfinished checkpoint save (interrupted): {unfinished}']
  assert not os.path.exists(unfinished)
  assert checkpoint_lib.Checkpoints(run, keep=5).read('latest').step == 9


# ----------------------------------------------------------------------------- evaluate / export
@pytest.mark.parametrize('damage', sorted(DAMAGE))
def test_evaluate_and_export_skip_an_unreadable_latest(damage, run, caplog):
  damaged = _damage_step(run, 6, DAMAGE[damage])
  caplog.set_level('INFO')
  assert robustness.restore_classifier(run, 'latest').step == 3
  lines = _warnings(caplog)
  for step_dir in damaged:
    _assert_one_line_report(lines, 6, step_dir, 'skipping it')
  _assert_fell_back(lines, 3, _step_dir(run, 'latest', 3))
  caplog.clear()
  _, slot, step = export._restore(run, 'latest')  # pylint: disable=protected-access
  assert (slot, step) == ('latest', 3)
  for step_dir in damaged:
    _assert_one_line_report(_warnings(caplog), 6, step_dir, 'skipping it')
    assert os.path.isdir(step_dir)  # readers leave the workdir as it is


@pytest.mark.parametrize('damage', sorted(DAMAGE))
def test_an_unreadable_best_falls_back_to_the_newest_readable(damage, run, caplog):
  best_step = checkpoint_lib.Checkpoints(run, keep=5).best_step()
  damaged = _step_dir(run, 'best', best_step)
  DAMAGE[damage](damaged)
  caplog.set_level('INFO')
  assert robustness.restore_classifier(run, 'best').step == 6  # best/ has no other step
  lines = _warnings(caplog)
  _assert_one_line_report(lines, best_step, damaged, 'skipping it')
  _assert_fell_back(lines, 6, _step_dir(run, 'latest', 6))
  _, slot, step = export._restore(run, 'best')  # pylint: disable=protected-access
  assert (slot, step) == ('latest', 6)


def test_evaluate_and_export_ignore_a_save_killed_half_way(run, caplog):
  kill_during_save(run, 9)
  unfinished = os.path.join(run, 'checkpoints', '9' + checkpoint_lib.UNFINISHED_SUFFIX)
  caplog.set_level('INFO')
  assert robustness.restore_classifier(run, 'latest').step == 6
  assert [line for line in _warnings(caplog) if unfinished in line] == [
      f'ignoring an unfinished checkpoint save (interrupted or in progress): {unfinished}']
  _, slot, step = export._restore(run, 'latest')  # pylint: disable=protected-access
  assert (slot, step) == ('latest', 6)
  assert os.path.isdir(unfinished)  # a reader never deletes: it may be a save in progress


def test_an_unreadable_step_asked_for_by_number_is_an_error_naming_it(run, caplog):
  _damage_step(run, 6, truncate)
  caplog.set_level('INFO')
  with pytest.raises(robustness.EvaluationError) as error:
    robustness.restore_classifier(run, '6')
  assert str(error.value).startswith('--checkpoint: checkpoint step 6 is unreadable (tried ')
  assert os.path.join(run, 'checkpoints', '6') in str(error.value)
  assert not any(line.startswith('using checkpoint') for line in _warnings(caplog))


# ----------------------------------------------------------------------------- none readable
def _damage_everything(workdir):
  for step_dir in glob.glob(os.path.join(workdir, '*', '[0-9]*')):
    truncate(step_dir)


def test_with_no_readable_checkpoint_every_entry_point_stops_with_one_clear_error(run):
  _damage_everything(run)
  message = f'no readable checkpoint in {run} (tried '
  with pytest.raises(checkpoint_lib.CheckpointError) as error:
    _train(_config(), run)
  assert str(error.value).startswith(message)
  assert not glob.glob(os.path.join(run, '*', '*.unreadable*'))  # nothing moved: same next time
  with pytest.raises(robustness.EvaluationError) as error:
    robustness.restore_classifier(run, 'latest')
  assert str(error.value).startswith(f'--checkpoint: {message}')
  with pytest.raises(export.ExportError) as error:
    export._restore(run, 'best')  # pylint: disable=protected-access
  assert str(error.value).startswith(message)
  assert 'OUT_OF_RANGE' in str(error.value) and '\n' not in str(error.value)


def test_evaluate_cli_with_no_readable_checkpoint_prints_one_error_line(run):
  _damage_everything(run)
  result = subprocess.run(
      [sys.executable, '-c',
       'import sys; sys.path.insert(0, "tests"); sys.argv = sys.argv[1:]\n'
       'from absl import app; import evaluate; app.run(evaluate.main)',
       'evaluate.py', f'--workdir={run}', '--checkpoint=latest', '--attacks=clean'],
      cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert result.returncode == 1
  assert 'Traceback' not in result.stderr
  last = result.stderr.strip().splitlines()[-1]
  assert last.startswith(f'error: --checkpoint: no readable checkpoint in {run}')


def test_reading_a_run_with_no_checkpoints_creates_no_folders(tmp_path):
  """evaluate.py / export.py on a folder with only config.json: one error, and the folder
  is left as it was (no empty best/ and checkpoints/)."""
  workdir = tmp_path / 'only_config'
  workdir.mkdir()
  (workdir / 'config.json').write_text(_config().to_json())
  with pytest.raises(robustness.EvaluationError, match='--checkpoint'):
    robustness.restore_classifier(str(workdir), 'best')
  with pytest.raises(export.ExportError):
    export._restore(str(workdir), 'latest')  # pylint: disable=protected-access
  assert sorted(os.listdir(workdir)) == ['config.json']


def test_a_data_error_leaves_no_workdir(tmp_path):
  config = _config()
  config.data.manual_dir = str(tmp_path / 'empty_data')
  os.makedirs(config.data.manual_dir)
  workdir = tmp_path / 'run'
  with pytest.raises(data_lib.DataError):
    train.train_and_evaluate(config, str(workdir))
  assert not workdir.exists()


def test_only_a_failed_restores_leftover_reports_are_dropped():
  """asyncio's 'Task exception was never retrieved' for an abandoned TensorStore read is
  dropped (it printed a traceback after the one-line fallback in 3 of 40 export runs); the
  same report of any other error, and every other asyncio record, still print."""
  import logging

  def record(msg, error):
    exc_info = (type(error), error, None) if error else None
    return logging.LogRecord('asyncio', logging.ERROR, __file__, 1, msg, None, exc_info)

  leftover = ValueError('NOT_FOUND: Error opening "zarr" driver [tensorstore_spec=\'{}\']')
  never_retrieved = 'Task exception was never retrieved\nfuture: <Task finished>'
  assert checkpoint_lib._is_abandoned_task_report(record(never_retrieved, leftover))
  assert not checkpoint_lib._is_abandoned_task_report(
      record(never_retrieved, ValueError('a bug of ours')))
  # orbax wraps the read error (at exit, asyncio reports the gathering future).
  try:
    try:
      raise leftover
    except ValueError as cause:
      raise Exception('Encountered error while reading array index') from cause
  except Exception as wrapped:  # pylint: disable=broad-except
    assert checkpoint_lib._is_abandoned_task_report(
        record('_GatheringFuture exception was never retrieved', wrapped))
  assert not checkpoint_lib._is_abandoned_task_report(record('Unclosed client session', None))
  for _ in range(2):  # asked on every restore attempt, installed once
    checkpoint_lib._quiet_abandoned_reads()
  assert logging.getLogger('asyncio').filters.count(checkpoint_lib._keeps_asyncio_record) == 1
