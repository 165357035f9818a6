"""The training loop end to end on mock data: every method, resume, divergence."""

import glob
import json
import os
import subprocess
import sys

import logging

import jax
import numpy as np
import pytest
import tensorflow_datasets as tfds

from conftest import make_tiny_mnist_config, tiny_mnist_config_flags

from configs import mnist
from l2lda_jax import checkpoint as checkpoint_lib
from l2lda_jax import train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(config, workdir):
  with tfds.testing.mock_data(num_examples=96):
    return train.train_and_evaluate(config, str(workdir))


class _Messages(logging.Handler):
  """Every log record's message, as caplog.text would hold it (at INFO)."""

  def __init__(self):
    super().__init__(logging.INFO)
    self.messages = []

  def emit(self, record):
    self.messages.append(record.getMessage())


@pytest.fixture(scope='module')
def tiny_run(tmp_path_factory):
  """tiny_run(method) -> (workdir, report, log text) of conftest's tiny config trained with
  `method` in a fresh workdir: one run per method for the whole module (each compiles its
  training steps), which the tests below only read."""
  runs = {}

  def run(method):
    if method not in runs:
      config = make_tiny_mnist_config()
      config.method = method
      workdir = tmp_path_factory.mktemp(method)
      root, handler = logging.getLogger(), _Messages()
      level = root.level
      root.setLevel(logging.INFO)
      root.addHandler(handler)
      try:
        report = _run(config, workdir)
      finally:
        root.removeHandler(handler)
        root.setLevel(level)
      runs[method] = (workdir, report, '\n'.join(handler.messages))
    return runs[method]

  return run


def _restore(workdir, step=None):
  """The whole saved state (classifier, optimiser, generator) of a checkpoint."""
  checkpoints = checkpoint_lib.Checkpoints(str(workdir), keep=3)
  step = checkpoints.latest_step() if step is None else step
  return checkpoints.latest.restore(step)


def _restore_params(workdir, step=None):
  return _restore(workdir, step)['params']


def _logged_scalars(workdir) -> dict:
  """{tag: [values in step order]} from the run's TensorBoard events."""
  import tensorflow as tf
  scalars = {}
  for path in sorted(glob.glob(os.path.join(str(workdir), 'events.out.tfevents.*'))):
    for event in tf.compat.v1.train.summary_iterator(path):
      for value in event.summary.value:
        scalars.setdefault(value.tag, []).append(float(tf.make_ndarray(value.tensor)))
  return scalars


GAME_SCALARS = ('generator_ce_t1', 'generator_ce_t2', 'adv_boundary_share', 'gn_channel_norm',
                'train_adv_accuracy', 'generator_learning_rate', 'val_generator_accuracy',
                'val_robust_accuracy', 'val_robust_accuracy_eps_x0.5',
                'val_robust_accuracy_eps_x1.25', 'z_live_units')


def _assert_the_game_is_observable(workdir, log_text: str):
  """The L2L-DA issue's view of the game: in TensorBoard and on the progress lines."""
  scalars = _logged_scalars(workdir)
  missing = [tag for tag in GAME_SCALARS if tag not in scalars]
  assert not missing, f'not logged: {missing}'
  # The generator's steps reach eps (SPEC: T * step >= eps): some pixels sit on the boundary.
  assert max(scalars['adv_boundary_share']) > 0
  assert all(0.9 < v <= 1.0 + 1e-4 for v in scalars['gn_channel_norm'])
  assert min(scalars['z_live_units']) > 0  # six steps cannot kill z; a bug in the metric would
  for tag in ('generator_ce_t1', 'adv_boundary_share', 'gn_channel_norm'):
    assert tag in log_text
  assert 'own generator' in log_text and 'eps x1.25' in log_text


@pytest.mark.parametrize('method', ['plain', 'fgsm', 'pgd', 'cw', 'l2lda', 'l2l'])
def test_every_method_trains_checkpoints_and_reports(method, tiny_mnist_config, tiny_run):
  config = tiny_mnist_config
  config.method = method
  tmp_path, report, log_text = tiny_run(method)
  assert report['method'] == method and report['steps'] == 6
  for key in ('last', 'best_on_validation'):
    assert 0.0 <= report[key]['robust_accuracy'] <= 1.0
    assert 0.0 <= report[key]['clean_accuracy'] <= 1.0
  with open(tmp_path / 'results.json') as f:
    assert json.load(f)['last']['step'] == 6
  assert sorted(os.listdir(tmp_path / 'checkpoints')) == ['3', '6']
  for step in (3, 6):  # every save is one line in the log
    assert log_text.count(f'saved checkpoint {tmp_path}/checkpoints/{step} (') == 1
  assert glob.glob(str(tmp_path / 'events.out.tfevents.*'))
  model = train.create_classifier(config.model)
  init = train.init_train_state(model, train.make_optimizer(config.train), (28, 28, 1),
                                config.seed).params
  trained = _restore_params(tmp_path)
  changed = jax.tree_util.tree_map(lambda a, b: not np.allclose(a, b), init, trained)
  assert all(jax.tree_util.tree_leaves(changed))
  if method == 'l2lda':
    _assert_the_game_is_observable(tmp_path, log_text)


@pytest.mark.parametrize('method', ['pgd', 'l2lda'])
def test_resume_continues_to_the_same_parameters(method, tiny_mnist_config, tmp_path,
                                                tiny_run):
  """Stopping after step 3 and restarting gives bit-identical parameters to one run."""
  config = tiny_mnist_config
  config.method = method
  whole_dir, _, _ = tiny_run(method)  # the same config, run once to its end
  config.train.steps = 3
  _run(config, tmp_path / 'split')
  config.train.steps = 6
  report = _run(config, tmp_path / 'split')
  assert report['resumed_from_step'] == 3
  whole, split = _restore(whole_dir), _restore(tmp_path / 'split')
  assert jax.tree_util.tree_structure(whole) == jax.tree_util.tree_structure(split)
  for a, b in zip(jax.tree_util.tree_leaves(whole), jax.tree_util.tree_leaves(split)):
    np.testing.assert_array_equal(a, b)


def test_nan_loss_stops_the_run_and_keeps_the_last_good_checkpoint(tiny_mnist_config,
                                                                   tmp_path):
  config = tiny_mnist_config
  config.method = 'plain'
  config.train.learning_rate = 1e30  # the second step's loss is no longer finite
  config.train.lr_decay_steps = ()
  config.log_every_steps = 1
  config.checkpoint.every_steps = 1
  with pytest.raises(train.TrainingDiverged, match=r'loss became .* at step (\d+).*'
                     r'Last good checkpoint: step \d+') as error:
    _run(config, tmp_path)
  checkpoints = checkpoint_lib.Checkpoints(str(tmp_path), keep=3)
  last_good = checkpoints.latest_step()
  assert last_good is not None and f'step {last_good} in' in str(error.value)
  params = _restore_params(tmp_path, last_good)
  assert all(np.all(np.isfinite(x)) for x in jax.tree_util.tree_leaves(params))


def test_init_from_copies_the_classifier_of_another_run(tiny_mnist_config, tmp_path, tiny_run):
  config = tiny_mnist_config
  pretrain, _, _ = tiny_run('plain')  # read only: the fine-tuning writes its own workdir
  source = checkpoint_lib.Checkpoints(str(pretrain), keep=3)
  best = source.best.restore(source.best_step())['params']
  config.method = 'l2lda'
  model = train.create_classifier(config.model)
  tx = train.make_optimizer(config.train)
  state = train.create_train_state(config, model, tx, (28, 28, 1), 10)
  loaded = train.load_classifier_from(state, str(pretrain))
  for a, b in zip(jax.tree_util.tree_leaves(loaded.params), jax.tree_util.tree_leaves(best)):
    np.testing.assert_array_equal(a, b)
  assert loaded.generator is state.generator  # the generator starts fresh

  config.init_from = str(pretrain)
  report = _run(config, tmp_path / 'finetune')
  assert report['method'] == 'l2lda'


def test_init_from_rejects_a_different_model_and_a_missing_dir(tiny_mnist_config, tmp_path,
                                                              tiny_run):
  config = tiny_mnist_config
  pretrain, _, _ = tiny_run('plain')
  model = train.create_classifier('resnet20')
  tx = train.make_optimizer(config.train)
  # Jitted: one compilation of ResNet-20's initialisation instead of one per operation.
  state = jax.jit(lambda: train.init_train_state(model, tx, (32, 32, 3), 0))()
  with pytest.raises(train.ConfigError, match='config.init_from'):
    train.load_classifier_from(state, str(pretrain))
  with pytest.raises(train.ConfigError, match='not a directory'):
    train.load_classifier_from(state, str(tmp_path / 'nowhere'))


def test_config_json_paths_are_absolute_so_the_workdir_moves_with_its_user(monkeypatch,
                                                                          tmp_path):
  config = mnist.get_config('smoke')
  config.data.manual_dir = 'data/mnist'
  config.data.tfds_data_dir = ''
  config.init_from = '../runs/pretrained'
  monkeypatch.chdir(tmp_path)
  portable = train.portable_config(config)
  assert portable.data.manual_dir == str(tmp_path / 'data/mnist')
  assert portable.init_from == os.path.normpath(str(tmp_path / '../runs/pretrained'))
  assert portable.data.tfds_data_dir == ''  # empty means "TFDS's default", not "here"
  assert config.data.manual_dir == 'data/mnist'  # the run's own config is not changed


def test_start_up_prints_only_the_run_the_data_and_the_devices(tmp_path, tiny_run):
  """train.py's output before the first progress line: our three lines, no library INFO
  (TFDS, orbax, JAX backends, TensorFlow's oneDNN notice); --verbose brings them back."""
  def start(*flags):
    """Starts train.py; its stdout and stderr go to files (no pipe to fill)."""
    script = ('import sys; sys.argv = sys.argv[1:]\n'
              'import tensorflow_datasets as tfds\n'
              'from absl import app; import train\n'
              'with tfds.testing.mock_data(num_examples=96):\n'
              '  app.run(train.main)')
    outputs = [open(tmp_path / f'{len(flags)}.{name}', 'w+') for name in ('out', 'err')]
    # tiny_run('plain')'s config: its programs are in the compilation cache already.
    process = subprocess.Popen(
        [sys.executable, '-c', script, 'train.py', '--config=configs/mnist.py:smoke',
         *tiny_mnist_config_flags(), '--config.method=plain',
         f'--workdir={tmp_path / str(len(flags))}', *flags],
        cwd=ROOT, stdout=outputs[0], stderr=outputs[1],
        env={k: v for k, v in os.environ.items() if not k.startswith('TF_')})
    return process, outputs

  def read(file):
    file.seek(0)
    text = file.read()
    file.close()
    return text

  def start_up_lines(process, outputs):
    try:
      process.wait(timeout=600)
    finally:
      if process.poll() is None:
        process.kill()
    stdout, stderr = [read(file) for file in outputs]
    assert process.returncode == 0, stderr[-2000:]
    lines = (stdout + stderr).splitlines()
    tiny = make_tiny_mnist_config()
    first_line = f'] step {tiny.log_every_steps}/{tiny.train.steps}'
    first_step = next(i for i, line in enumerate(lines) if first_line in line)
    return lines[:first_step]

  tiny_run('plain')  # compiles the programs both runs below read from the cache
  quiet = start_up_lines(*start())
  verbose = start_up_lines(*start('--verbose'))
  assert [line.split('] ', 1)[1].split(':')[0] for line in quiet] == ['run', 'data', 'devices']
  assert len(verbose) > len(quiet)
  assert any('dataset' in line.lower() and 'train.py' not in line for line in verbose)


def test_log_lines_go_above_the_terminal_progress_bar_not_through_it():
  import io
  import tqdm
  screen = io.StringIO()
  bar = tqdm.tqdm(total=10, file=screen, disable=False, mininterval=0, ncols=60,
                  bar_format='{n_fmt}/{total_fmt}')
  bar.update(3)
  with train.above_bar(bar):
    screen.write('a log line\n')
  before, after = screen.getvalue().split('a log line\n')
  assert before.endswith('3/10\r' + ' ' * len('3/10') + '\r')  # the bar blanked first
  assert after == '\r3/10'  # then drawn again below the line
  bar.close()


def test_progress_eta_is_measured_since_the_phase_began(monkeypatch):
  """100 warm-up steps at 100/s, then attack steps at 2/s after a 30 s compile: the ETA
  of each phase comes from that phase's own rate, never from the other's."""
  clock = [0.0]
  monkeypatch.setattr(train.time, 'time', lambda: clock[0])
  progress = train.Progress(first_step=0, total_steps=1100, warmup_steps=100)
  clock[0] = 0.5
  assert 'warm-up ETA ?' in progress.line(50)  # the phase's first line: compile inside
  clock[0] = 0.75
  line = progress.line(75)
  assert '100.00 steps/s' in line and 'warm-up ETA 00:00:00' in line
  assert 'attack steps (not yet timed)' in line
  clock[0] = 31.0  # step 100 -> 110 includes the attack step's compilation
  assert progress.line(110).endswith('| ETA ?')
  clock[0] = 76.0  # 90 attack steps in 45 s
  line = progress.line(200)
  assert '2.00 steps/s' in line and line.endswith('ETA 00:07:30')  # 900 steps left at 2/s


def test_validation_pgd_is_compiled_once_for_all_eps_multiples_and_keeps_their_answers():
  """make_evaluator passes eps and the step as arguments: one compiled PGD for eps/2, eps and
  1.25 eps, each example's answer the same as PGD with that radius written in as a constant."""
  import functools
  from l2lda_jax import attacks, data as data_lib, evaluation, sharding
  from l2lda_jax.models import create_classifier
  config = make_tiny_mnist_config()
  model = create_classifier(config.model, 10, config.conv_impl)
  variables = model.init(jax.random.PRNGKey(0), np.zeros((1, 28, 28, 1), np.float32))
  rng = np.random.default_rng(0)
  split = data_lib.Split(rng.integers(0, 256, (40, 28, 28, 1), dtype=np.uint8),
                         rng.integers(0, 10, 40).astype(np.int32))
  mesh = sharding.make_data_mesh()
  traced = []  # every function JAX traces for compilation (cache hits or not)

  def listener(event, _, fun_name='', **__):
    if event == '/jax/core/compile/jaxpr_trace_duration':
      traced.append(fun_name)

  jax.monitoring.register_event_duration_secs_listener(listener)
  try:
    report = train.make_evaluator(config, model, mesh, config.eval,
                                  train.VALIDATION_EPS_MULTIPLES)(variables, split)
  finally:
    jax.monitoring.unregister_event_duration_listener(listener)
  # make_correct_fn's `correct`: once clean, once PGD for the three radii (not three times).
  assert traced.count('correct') == 2
  key = jax.random.PRNGKey(config.seed + 1)
  apply_fn = train.inference_apply(model)
  for multiple in train.VALIDATION_EPS_MULTIPLES:
    pgd = functools.partial(attacks.pgd, eps=multiple * config.eps,
                            steps=config.eval.pgd_steps,
                            step_size=multiple * config.eval.pgd_step_size)
    constant = evaluation.per_example_correct(evaluation.make_correct_fn(apply_fn, pgd),
                                              variables, split, config.eval.batch_size, key,
                                              mesh)
    assert report[train.robust_key(multiple)] == float(np.mean(constant))
  assert report['robust_accuracy_eps_x1.25'] <= report['robust_accuracy_eps_x0.5']
