"""evaluate.py and l2lda_jax.robustness on tiny runs over mock data."""

import functools
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow_datasets as tfds

from conftest import learnable_mnist_mock, make_tiny_mnist_config

from l2lda_jax import data as data_lib
from l2lda_jax import robustness, train
from l2lda_jax.attacks import pgd
from l2lda_jax.attack_specs import AttackNameError, AttackSpec, parse_attack, parse_attacks

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EPS = 0.3


# ----------------------------------------------------------------------------- the name parser
def test_parse_attacks_reads_every_kind_of_name():
  specs = parse_attacks('clean, fgsm,pgd100,PGD100x10,cw1000,mifgsm20,l2lda,l2l,advgan,gap,transfer')
  assert specs[2] == AttackSpec('pgd100', 'pgd', 100, 1)
  assert specs[3] == AttackSpec('pgd100x10', 'pgd', 100, 10)
  assert specs[4] == AttackSpec('cw1000', 'cw', 1000, 1)
  assert specs[5] == AttackSpec('mifgsm20', 'mifgsm', 20, 1)
  assert [s.kind for s in specs[6:]] == ['l2lda', 'l2l', 'advgan', 'gap', 'transfer']
  assert [s.kind for s in parse_attacks('APGD-CE,apgd-t,fab-t,autoattack')] == [
      'apgd-ce', 'apgd-t', 'fab-t', 'autoattack']


@pytest.mark.parametrize('text, message', [
    ('pgd', 'unknown attack'), ('bim10', 'unknown attack'), ('pgd10x', 'unknown attack'),
    ('pgd0', 'at least one step'), ('pgd10x0', 'at least one restart'),
    ('cw100x3', 'only for pgd'), ('pgd10,pgd10', 'listed twice'), (' , ', 'no attack'),
])
def test_parse_attacks_rejects_bad_names_with_one_clear_message(text, message):
  with pytest.raises(AttackNameError, match=message) as error:
    parse_attacks(text)
  assert str(error.value).startswith('--attacks:')


# ----------------------------------------------------------------------------- end to end
def _tiny_config(method):
  """conftest's tiny config, trained long enough (60 steps, lr 0.05) to learn the mock task."""
  config = make_tiny_mnist_config()
  config.method = method
  config.train.steps = 60
  config.train.learning_rate = 0.05
  config.train.lr_decay_steps = (50,)
  config.eval.every_steps = 30
  config.checkpoint.every_steps = 30
  return config


@pytest.fixture(scope='module')
def plain_run(tmp_path_factory):
  workdir = tmp_path_factory.mktemp('plain')
  with learnable_mnist_mock():
    train.train_and_evaluate(_tiny_config('plain'), str(workdir))
  return str(workdir)


# The tests share attacks where their claims allow (pgd5 at eps 0.3, batch 16): each jitted
# evaluation is compiled once and then read from the persistent compilation cache
# (tests/conftest.py), and compilation is most of this file's time.
def _evaluate(workdir, attacks, log=lambda *_: None, on_row=None, **overrides):
  overrides.setdefault('checkpoint', 'latest')
  overrides.setdefault('num_examples', 48)
  options = robustness.EvalOptions(workdir=workdir, attacks=parse_attacks(attacks),
                                   batch_size=16, progress=False, **overrides)
  robustness.validate_options(options)
  with learnable_mnist_mock():
    return robustness.evaluate(options, log=log, on_row=on_row)


def test_partial_reports_and_per_example_bits_give_the_worst_case(plain_run):
  partials = []
  report = _evaluate(plain_run, 'clean,fgsm,pgd5', on_row=partials.append)
  assert [len(p['rows']) for p in partials] == [1, 2, 3]
  assert not any(p['complete'] for p in partials) and report['complete']
  assert partials[1]['worst_case_accuracy'] >= report['worst_case_accuracy']
  correct = {name: robustness.unpack_correct(bits, report['num_examples'])
             for name, bits in report['per_example_correct'].items()}
  assert list(correct) == ['clean', 'fgsm', 'pgd5']
  for row in report['rows']:
    assert correct[row['attack']].mean() == pytest.approx(row['accuracy'])
  worst = np.logical_and.reduce(list(correct.values())).mean()
  assert worst == pytest.approx(report['worst_case_accuracy'])
  assert report['worst_case_accuracy'] < report['rows'][0]['accuracy']  # the attacks bite


def test_an_interrupted_resume_keeps_the_rows_it_had_not_reached(plain_run):
  # Interrupted after clean and pgd5; resumed with pgd5 listed last, the rerun's partial
  # reports (what an interruption would leave) still hold pgd5 while fgsm runs.
  first = []
  _evaluate(plain_run, 'clean,pgd5,fgsm', on_row=first.append)
  interrupted = first[1]
  assert [r['attack'] for r in interrupted['rows']] == ['clean', 'pgd5']
  partials = []
  report = _evaluate(plain_run, 'clean,fgsm,pgd5', on_row=partials.append,
                     previous_report=interrupted)
  assert [r['attack'] for r in partials[0]['rows']] == ['clean', 'pgd5']
  assert [r['attack'] for r in partials[1]['rows']] == ['clean', 'fgsm', 'pgd5']
  assert partials[0]['per_example_correct']['pgd5'] == interrupted['per_example_correct']['pgd5']
  assert partials[0]['worst_case_accuracy'] == interrupted['worst_case_accuracy']
  assert [r['attack'] for r in report['rows']] == ['clean', 'fgsm', 'pgd5']
  assert report['per_example_correct']['pgd5'] == interrupted['per_example_correct']['pgd5']


def test_a_finished_report_grows_by_the_attacks_added(plain_run):
  """The same --output with more --attacks: the finished rows are kept, only the new attack
  runs, and the worst case is over all of them, as if everything had run at once."""
  finished = _evaluate(plain_run, 'clean')
  assert finished['complete']
  messages = []
  grown = _evaluate(plain_run, 'clean,pgd5', previous_report=finished, log=messages.append)
  assert [m.split(':')[0] for m in messages if '(resumed)' in m] == ['clean']
  assert [r['attack'] for r in grown['rows']] == ['clean', 'pgd5']
  at_once = _evaluate(plain_run, 'clean,pgd5')
  assert grown['per_example_correct'] == at_once['per_example_correct']
  assert grown['worst_case_accuracy'] == at_once['worst_case_accuracy']
  assert grown['worst_case_accuracy'] < finished['worst_case_accuracy']


def test_report_rows_bounds_min_and_worst_case(plain_run):
  report = _evaluate(plain_run, 'clean,fgsm,pgd5,pgd5x3,cw5,mifgsm5')
  rows = {r['attack']: r for r in report['rows']}
  assert list(rows) == ['clean', 'fgsm', 'pgd5', 'pgd5x3', 'cw5', 'mifgsm5']
  assert report['num_examples'] == 48 and report['eps'] == pytest.approx(EPS)
  for row in report['rows']:
    assert row['max_linf'] <= EPS + 1e-6
    assert row['max_box_violation'] == 0.0
  attacked = [r['accuracy'] for r in report['rows'] if r['attack'] != 'clean']
  assert report['min_accuracy'] == min(attacked)
  assert report['worst_case_accuracy'] <= report['min_accuracy']
  # The model learnt the block-position task, and eps = 0.3 attacks break it.
  assert rows['clean']['accuracy'] > 0.5
  assert rows['pgd5']['accuracy'] < rows['clean']['accuracy']
  assert rows['pgd5x3']['accuracy'] <= rows['pgd5']['accuracy']
  assert '| **per-example worst case**' in report['table']


def test_autoattack_rows_stay_in_the_ball_and_break_the_undefended_model(plain_run):
  # One batch: these attacks run hundreds of iterations per batch, slowly under the suite's
  # -O0, and the claims need no more examples than 16 (the 48-example run is the sequence's).
  report = _evaluate(plain_run, 'clean,apgd-ce,apgd-t,fab-t', num_examples=16)
  rows = {r['attack']: r for r in report['rows']}
  for name in ('apgd-ce', 'apgd-t', 'fab-t'):
    assert rows[name]['max_linf'] <= EPS + 1e-6 and rows[name]['max_box_violation'] == 0.0
    assert rows[name]['accuracy'] < rows['clean']['accuracy']


def test_autoattack_sequence_rows_resume_and_saved_examples(plain_run, tmp_path):
  saved = str(tmp_path / 'adv.npz')
  partials = []
  report = _evaluate(plain_run, 'clean,autoattack', on_row=partials.append,
                     save_adversarial=saved)
  names = ['clean'] + [f'autoattack {s}' for s in ('apgd-ce', 'apgd-t', 'fab-t', 'square')]
  rows = {r['attack']: r for r in report['rows']}
  assert list(rows) == names
  accuracies = [rows[n]['accuracy'] for n in names]
  assert accuracies == sorted(accuracies, reverse=True)  # each stage only removes examples
  assert accuracies[-1] < accuracies[0]  # it breaks the undefended model
  assert report['worst_case_accuracy'] == pytest.approx(accuracies[-1])
  # Each stage attacked exactly the examples the earlier ones left robust.
  n = report['num_examples']
  assert rows['autoattack apgd-t']['attacked'] == round(rows['autoattack apgd-ce']['accuracy'] * n)
  with np.load(saved) as adv:
    x_adv, broken_at, clean_correct = adv['x_adv'], adv['broken_at'], adv['clean_correct']
  with learnable_mnist_mock():
    config = robustness.load_run_config(plain_run)
    test = data_lib.load_dataset(config.data).test.take(48)
  x = np.asarray(data_lib.to_float(test.images))
  assert np.max(np.abs(x_adv - x)) <= EPS + 1e-6 and x_adv.min() >= 0 and x_adv.max() <= 1
  final = robustness.unpack_correct(report['per_example_correct']['autoattack square'], n)
  assert np.array_equal(broken_at >= 0, clean_correct & ~final)
  classifier = robustness.restore_classifier(plain_run, 'latest')
  predicted = np.argmax(classifier.apply_fn(classifier.variables, x_adv), -1)
  assert np.all(predicted[broken_at >= 0] != test.labels[broken_at >= 0])
  np.testing.assert_array_equal(x_adv[broken_at < 0], x[broken_at < 0])

  # Interrupted after APGD-T: the rerun keeps those rows, runs FAB-T and Square only, and
  # ends with the uninterrupted run's answer, example by example, saved examples included.
  interrupted = partials[2]
  assert [r['attack'] for r in interrupted['rows']] == names[:3] and not interrupted['complete']
  messages = []
  resumed = _evaluate(plain_run, 'clean,autoattack', previous_report=interrupted,
                      log=messages.append, save_adversarial=saved)
  assert sum('(resumed)' in m for m in messages) == 3
  assert [r['attack'] for r in resumed['rows']] == names
  assert resumed['per_example_correct'] == report['per_example_correct']
  with np.load(saved) as again:
    np.testing.assert_array_equal(again['broken_at'], broken_at)
    np.testing.assert_array_equal(again['x_adv'], x_adv)
  # Another evaluation's report is not resumed: other examples, eps or PGD step.
  for change in ({'num_examples': 47}, {'eps': 0.2}, {'pgd_step_size': 0.01}):
    assert robustness.resumable_rows(interrupted, {**interrupted['identity'], **change}) == {}


def test_eps_zero_attacks_give_exactly_the_clean_accuracy(plain_run):
  report = _evaluate(plain_run, 'clean,fgsm,pgd3,cw3', eps=0.0)
  accuracies = {r['attack']: r['accuracy'] for r in report['rows']}
  assert len(set(accuracies.values())) == 1, accuracies
  assert all(r['max_linf'] == 0.0 for r in report['rows'])


def test_transfer_sends_the_last_iterate_so_the_target_itself_gives_plain_pgd(plain_run):
  """A transfer row sends PGD's last iterate, not the white-box rows' first fooling one
  (robustness.gradient_transfer_attack); from the target itself that is the attack
  library's plain PGD-5 (eps/4 steps), with the white-box row's key."""
  report = _evaluate(plain_run, 'pgd5,transfer', surrogates=[plain_run], transfer_attack='pgd5',
                     eps=EPS)
  assert report['rows'][1]['attack'].startswith('transfer pgd5 from ')
  correct = [robustness.unpack_correct(report['per_example_correct'][row['attack']], 48)
             for row in report['rows']]
  white_box, transfer = correct
  classifier = robustness.restore_classifier(plain_run, 'latest')
  with learnable_mnist_mock():
    test = data_lib.load_dataset(classifier.config.data).test.take(48)
  spec = parse_attack('pgd5')
  plain_pgd = functools.partial(pgd, eps=EPS, steps=5, step_size=EPS / 4)
  last_iterate = robustness.make_batch_eval(classifier.apply_fn, plain_pgd)
  [expected, *_] = robustness.run_batched(last_iterate, classifier.variables, test, 16,
                                          robustness.attack_key(jax.random.PRNGKey(0), spec),
                                          'expected', False)
  np.testing.assert_array_equal(transfer, expected)
  assert not np.any(white_box & ~transfer)  # the best iterate breaks a superset


def _mean_threshold_logits(threshold):
  """Two classes: 0 while the image's mean pixel is above `threshold`, else 1."""
  def apply(variables, x):
    margin = jnp.mean(x, axis=(1, 2, 3)) - threshold
    return jnp.stack([margin, -margin], -1)
  return apply


def test_transfer_sends_the_last_iterate_not_the_first_that_fools_the_surrogate():
  """Images of mean 0.6, eps 0.3, PGD-5 of eps/4: the surrogate (class 0 above 0.5) is
  fooled after two steps, at mean 0.45, which still leaves the target (class 0 above 0.4)
  correct; the last iterate, at mean 0.3, fools both. Only the last iterate transfers."""
  surrogate = robustness.Classifier(None, _mean_threshold_logits(0.5), {}, 0, None)
  images = np.full((4, 28, 28, 1), 153, np.uint8)  # 0.6
  y = jnp.zeros(4, jnp.int32)
  key = jax.random.PRNGKey(0)
  spec = parse_attack('pgd5')
  white_box = robustness.gradient_attack(spec, 0.3)
  for attack, target_correct in ((white_box, True),
                                 (robustness.gradient_transfer_attack(spec, 0.3), False)):
    run = robustness.transfer_batch_eval(_mean_threshold_logits(0.4), surrogate, attack)
    correct, *_ = run({}, images, y, key)
    assert np.all(np.asarray(correct) == target_correct), target_correct


def test_transfer_generators_are_trained_once_per_surrogate_and_read_back(plain_run, tmp_path):
  """Table 3 evaluates six defenses on the same surrogates: a generator trained on one is
  saved and read back for the next defense, and reading it back changes no result."""
  def run(cache, **overrides):
    messages = []
    options = dict(surrogates=[plain_run], transfer_attack='l2lda', generator_steps=2,
                   generator_draws=2, generator_unroll_steps=4, generator_batch_size=16,
                   transfer_generator_cache=str(tmp_path / cache))
    report = _evaluate(plain_run, 'transfer', log=messages.append, **{**options, **overrides})
    return report['per_example_correct'], ' | '.join(messages)

  first, trained = run('a')
  assert 'training a fresh generator' in trained and 'trained earlier' not in trained
  [saved] = os.listdir(tmp_path / 'a')
  assert saved.startswith('l2lda-') and saved.endswith('.msgpack')
  mask = os.umask(0o022)
  os.umask(mask)
  assert os.stat(tmp_path / 'a' / saved).st_mode & 0o777 == 0o666 & ~mask  # like the reports
  second, read = run('a')
  assert 'using the generator trained earlier' in read and 'training a' not in read
  assert second == first
  # Training is deterministic: a second cache gets the same bytes, so a cached generator is
  # the one the evaluation would have trained.
  again, _ = run('b')
  assert again == first
  assert (tmp_path / 'a' / saved).read_bytes() == (tmp_path / 'b' / saved).read_bytes()
  # Another generator option is another generator.
  _, retrained = run('a', generator_steps=3)
  assert 'training a fresh generator' in retrained
  assert len(os.listdir(tmp_path / 'a')) == 2


def test_checkpoint_selection_and_its_errors(plain_run):
  assert _evaluate(plain_run, 'clean', checkpoint='latest')['checkpoint_step'] == 60
  assert _evaluate(plain_run, 'clean', checkpoint='30')['checkpoint_step'] == 30
  with pytest.raises(robustness.EvaluationError, match='no checkpoint of step 7'):
    _evaluate(plain_run, 'clean', checkpoint='7')
  direct = _evaluate(plain_run, 'clean',
                     checkpoint_dir=os.path.join(plain_run, 'checkpoints', '30'))
  assert direct['checkpoint_step'] == 30
  assert direct['rows'][0]['accuracy'] == _evaluate(
      plain_run, 'clean', checkpoint='30')['rows'][0]['accuracy']


def test_validation_split_is_evaluated_instead_of_the_test_set(plain_run):
  """--split=validation: recipes are compared on held-out training images, never the test set."""
  report = _evaluate(plain_run, 'clean', split='validation')
  assert report['split'] == 'validation'
  assert report['num_examples'] == 32  # the tiny config's validation_size (48 asked)
  assert _evaluate(plain_run, 'clean')['num_examples'] == 48


@pytest.mark.parametrize('overrides, message', [
    ({'eps': 1.5}, '--eps'), ({'batch_size': 0}, '--batch_size'),
    ({'checkpoint': 'newest'}, '--checkpoint'), ({'surrogates': ['/nonexistent']}, '--surrogates'),
    ({'generator_unroll_steps': 3}, '--generator_unroll_steps: 3 steps of eps/4 reach 0.75 eps'),
    ({'split': 'train'}, '--split'), ({'generator_restarts': 0}, '--generator_restarts'),
])
def test_bad_options_name_their_flag(plain_run, overrides, message):
  options = robustness.EvalOptions(workdir=plain_run, attacks=parse_attacks('clean'),
                                   **overrides)
  with pytest.raises(robustness.EvaluationError, match=message):
    robustness.validate_options(options)


def test_cli_prints_one_error_line_for_a_missing_run_and_an_unknown_attack(tmp_path):
  cases = ((['--workdir', str(tmp_path / 'nothing')], 'error: --workdir'),
           (['--workdir', str(tmp_path), '--attacks=pgd'], 'error: --attacks'))
  # Both at once: each is mostly the single-threaded import of JAX and TensorFlow.
  processes = [subprocess.Popen([sys.executable, 'evaluate.py', *args], cwd=ROOT,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
               for args, _ in cases]
  try:
    stderrs = [process.communicate(timeout=600)[1] for process in processes]  # 300 s each
  finally:
    for process in processes:
      if process.poll() is None:
        process.kill()
  for process, stderr, (_, message) in zip(processes, stderrs, cases):
    assert process.returncode != 0
    assert message in stderr
    assert 'Traceback' not in stderr


def test_cli_writes_the_table_and_json(plain_run, tmp_path):
  output = tmp_path / 'report.json'
  env = dict(os.environ)
  result = subprocess.run(
      [sys.executable, '-c',
       'import sys; sys.path.insert(0, "tests"); sys.argv = sys.argv[1:]\n'
       'from conftest import learnable_mnist_mock\n'
       'with learnable_mnist_mock():\n'
       '  from absl import app; import evaluate; app.run(evaluate.main)',
       'evaluate.py', f'--workdir={plain_run}', '--attacks=clean,fgsm', '--num_examples=32',
       '--batch_size=16', f'--output={output}', '--noprogress'],
      cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
  assert result.returncode == 0, result.stderr[-2000:]
  assert '| fgsm |' in result.stdout
  with open(output) as f:
    saved = json.load(f)
  assert [r['attack'] for r in saved['rows']] == ['clean', 'fgsm']
  assert saved['command'].startswith('python evaluate.py')


def test_checks_run_after_the_attacks_and_report_pass_or_fail(plain_run):
  report = _evaluate(plain_run, 'clean,pgd5', checks=True, check_examples=32,
                     check_pgd_steps=2)
  by_name = {c['name']: c for c in report['checks']}
  assert by_name['evaluated_attacks_in_threat_model']['passed']
  assert by_name['perturbations_in_threat_model']['passed']
  assert by_name['forward_deterministic']['passed']
  assert by_name['outputs_are_logits']['passed']
  assert len(report['checks_text']) == len(report['checks'])
  assert all(line.startswith(('pass ', 'FAIL ')) for line in report['checks_text'])
  assert report['checks_passed'] == all(c['passed'] for c in report['checks'])
  assert 'square_after_gradient' not in by_name  # no score-based row ran


def test_square_after_gradient_check_runs_when_both_kinds_did(plain_run):
  report = _evaluate(plain_run, 'clean,pgd5,square50', checks=True, check_examples=32,
                     check_pgd_steps=2)
  check = {c['name']: c for c in report['checks']}['square_after_gradient']
  rows = {r['attack']: r['accuracy'] for r in report['rows']}
  # What Square broke beyond PGD is at least the accuracy gap between the two rows.
  assert check['value'] >= 100 * (rows['pgd5'] - rows['square50']) - 1e-6
  assert check['passed'] == (check['value'] < 0.5)


def test_generator_restarts_break_at_least_what_one_training_breaks(plain_run):
  """--generator_restarts=2: restart 0 is the single training (same seed, same key), so an
  image robust to both is robust to the first; the identity says how many there were."""
  flags = dict(generator_steps=2, generator_draws=1, generator_unroll_steps=4,
               generator_batch_size=16)
  messages = []
  once = _evaluate(plain_run, 'l2lda', **flags)
  twice = _evaluate(plain_run, 'l2lda', log=messages.append, generator_restarts=2, **flags)
  correct = {name: robustness.unpack_correct(r['per_example_correct']['l2lda'], 48)
             for name, r in (('once', once), ('twice', twice))}
  assert not np.any(correct['twice'] & ~correct['once'])
  assert [m for m in messages if 'generator restart' in m] == [
      'l2lda: generator restart 1/2', 'l2lda: generator restart 2/2']
  assert 'generator_restarts' not in once['identity']  # older reports stay resumable
  assert twice['identity']['generator_restarts'] == 2


def test_generator_attacks_and_figures(plain_run, tmp_path):
  messages = []
  report = _evaluate(plain_run, 'clean,l2lda,l2l', log=messages.append, generator_steps=2,
                     generator_draws=2, generator_unroll_steps=4, generator_batch_size=16,
                     figures_dir=str(tmp_path), figure_examples=32, check_pgd_steps=2)
  progress = [m for m in messages if m.startswith('l2lda: step ')]
  assert [m.split(',')[0] for m in progress] == ['l2lda: step 1/2', 'l2lda: step 2/2']
  rows = {r['attack']: r for r in report['rows']}
  for name in ('l2lda', 'l2l'):
    assert rows[name]['max_linf'] <= EPS + 1e-6 and rows[name]['max_box_violation'] == 0.0
    assert rows[name]['accuracy'] <= rows['clean']['accuracy']
  for name in ('figure2.png', 'accuracy_vs_eps.png'):
    assert os.path.getsize(tmp_path / name) > 1000
  with open(tmp_path / 'figure2.json') as f:
    curves = json.load(f)['curves']
  lengths = {name.split(' ')[0]: len(c['mean_max']) for name, c in curves.items()}
  assert lengths == {'PGD-4': 4, 'L2L-DA': 4, 'L2L*': 1}  # PGD runs the generator's T
  one_shot = next(c for name, c in curves.items() if name.startswith('L2L*'))
  assert one_shot['mean_std'] == [0.0]  # no z: every draw is the same attack
  with open(tmp_path / 'accuracy_vs_eps.json') as f:
    curve = json.load(f)
  assert curve['eps'][0] == 0.0 and curve['eps'][-1] == 0.5
  assert curve['accuracy'][-1] <= curve['accuracy'][0]


def test_restarts_attack_only_the_examples_every_earlier_restart_left_correct(
    plain_run, monkeypatch):
  classifier = robustness.restore_classifier(plain_run, 'latest')
  with learnable_mnist_mock():
    test = data_lib.load_dataset(classifier.config.data).test.take(48)
  options = robustness.EvalOptions(workdir=plain_run, attacks=[], batch_size=16,
                                   progress=False)
  attacked_sizes, run_batched = [], robustness.run_batched
  def recording_run_batched(batch_fn, variables, split, *args, **kwargs):
    attacked_sizes.append(len(split))
    return run_batched(batch_fn, variables, split, *args, **kwargs)
  monkeypatch.setattr(robustness, 'run_batched', recording_run_batched)

  key = jax.random.PRNGKey(3)
  correct, linf, box = robustness.restarts_on_survivors(parse_attack('pgd2x4'), classifier,
                                                        test, options, EPS, key)
  single = robustness.make_batch_eval(
      classifier.apply_fn, robustness.gradient_attack(parse_attack('pgd2'), EPS))
  first_correct = run_batched(single, classifier.variables, test, 16,
                              jax.random.fold_in(key, 0), '', False)[0]
  assert attacked_sizes[0] == 48
  assert attacked_sizes[1] == first_correct.sum()  # restart 2 sees restart 1's survivors
  assert attacked_sizes == sorted(attacked_sizes, reverse=True)
  assert not np.any(correct & ~first_correct)  # a break is never undone
  assert correct.sum() <= attacked_sizes[-1]
  assert linf.max() <= EPS + 1e-6 and box.max() == 0.0
