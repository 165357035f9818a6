"""Evaluation sanity checks: each passes on a normal model and FAILs on one built to fail it.

The data are 16x16 images whose class is which half is brighter (half means exactly
0.7 / 0.3, s = mean(left) - mean(right) = +-0.4). The normal model is linear in s:
accurate, and broken by any working attack with eps > 0.2. The bad models are the
same linear model with one defect each.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from l2lda_jax import attacks
from l2lda_jax import sanity

SIZE = 16
EPS = 0.3
LARGE_EPS = 0.5
BATCH = 32
N = 48  # two batches, the second one padded


def _data(n=N):
  rng = np.random.default_rng(0)
  y = (np.arange(n) % 2).astype(np.int32)
  texture = rng.uniform(-0.05, 0.05, (n, SIZE, SIZE, 1))
  half = SIZE // 2
  for part in (slice(None, half), slice(half, None)):  # re-centre: s is exactly +-0.4
    texture[:, :, part] -= texture[:, :, part].mean(axis=(1, 2, 3), keepdims=True)
  left = np.arange(SIZE)[None, None, :, None] < half
  sign = np.where(y == 0, 1.0, -1.0)[:, None, None, None]
  x = 0.5 + np.where(left, 0.2, -0.2) * sign + texture
  return x.astype(np.float32), y


X, Y = _data()
# XLA on CPU takes seconds to compile threefry draws of image shape (PGD's random
# start); RngBitGenerator keys compile in a fraction of that.
KEY = jax.random.key(0, impl='rbg')


def _score(x):
  half = x.shape[2] // 2
  return jnp.mean(x[:, :, :half], (1, 2, 3)) - jnp.mean(x[:, :, half:], (1, 2, 3))


def linear(x):
  """The normal model: accurate and not robust."""
  s = _score(x)
  return 10.0 * jnp.stack([s, -s], axis=-1)


def softmax_model(x):
  return jax.nn.softmax(linear(x))


def argmax_model(x):
  """Right answers, zero gradient everywhere."""
  return 10.0 * jax.nn.one_hot(jnp.argmax(linear(x), axis=-1), 2)


def noise_detector(x):
  """Linear, but answers with gradients cut when the input looks noisy.

  Within-half pixel variance is ~0.001 on clean data, ~0.03 after PGD's random start
  at eps 0.3 and ~0.07 at eps 0.5, so past the 0.045 threshold PGD starts where its
  gradient is zero and never moves: accuracy rises from eps 0.3 to eps 0.5.
  """
  half = x.shape[2] // 2
  noise = (jnp.var(x[:, :, :half], (1, 2, 3)) + jnp.var(x[:, :, half:], (1, 2, 3))) / 2
  logits = linear(x)
  return jnp.where((noise > 0.045)[:, None], jax.lax.stop_gradient(logits), logits)


def bump_model(x):
  """Logit margin g(s), odd and piecewise linear, with a loss bump around the data.

  For class 0 (s = 0.4) the loss rises as s falls to 0.35 and falls again from 0.35 to
  0.05, so small PGD steps (s moves 0.15 or 0.25 per step at eps 0.3 or 0.5) circle
  the bump at s = 0.35 and stay correct, while FGSM's single step lands at
  s = 0.4 - 2 eps < 0, misclassified. Gradients are never zero.
  """
  knots = jnp.array([-1.0, -0.35, -0.05, 0.05, 0.35, 1.0])
  values = jnp.array([-1.0, -0.3, -0.6, 0.6, 0.3, 1.0])
  g = jnp.interp(_score(x), knots, values)
  return 10.0 * jnp.stack([g, -g], axis=-1)


def noisy_model():
  """Random output noise drawn in Python: a new draw on every eager call."""
  rng = np.random.default_rng(0)
  return lambda x: linear(x) + 1e-3 * rng.standard_normal((x.shape[0], 2)).astype(np.float32)


def batch_normalised(x):
  """Normalises by the batch mean, like BatchNorm left in training mode."""
  return linear(x - jnp.mean(x, axis=0, keepdims=True) + 0.5)


def eps_ignoring_attack(logits_fn, x, y, key, eps):
  """A buggy attack that overrides eps with a fixed 0.3."""
  del eps
  return attacks.fgsm(logits_fn, x, y, key, eps=0.3)


def _assert_verdict(result, passed):
  assert isinstance(result, sanity.CheckResult)
  assert result.passed is passed, sanity.format_check(result)
  assert sanity.format_check(result).startswith('pass' if passed else 'FAIL')


# --- each check: pass on the normal model, FAIL on its bad one -------------------------------


@pytest.mark.parametrize('attack,passed', [(None, True), (eps_ignoring_attack, False)])
def test_eps_zero(attack, passed):
  attacks_at_zero = None if attack is None else {'buggy': attack}
  result = sanity.check_eps_zero(linear, X, Y, KEY, batch_size=BATCH,
                                 attacks_at_zero=attacks_at_zero)
  _assert_verdict(result, passed)
  assert result.value == (0 if passed else N)


@pytest.mark.parametrize('model,passed', [(linear, True), (noise_detector, False)])
def test_monotone_in_eps(model, passed):
  result = sanity.check_monotone_in_eps(model, X, Y, KEY, eps_grid=[0.0, 0.1, EPS, LARGE_EPS],
                                        batch_size=BATCH)
  _assert_verdict(result, passed)
  assert (result.value == 0.0) == passed


@pytest.mark.parametrize('model,passed', [(linear, True), (bump_model, False)])
def test_pgd_not_weaker_than_fgsm(model, passed):
  result = sanity.check_pgd_not_weaker_than_fgsm(model, X, Y, KEY, eps=EPS, batch_size=BATCH)
  _assert_verdict(result, passed)


@pytest.mark.parametrize('step_ratio,passed', [(None, True), (0.05, False)])
def test_pgd_steps_converged(step_ratio, passed):
  # eps/20 steps move a pixel 0.15 in 10 steps (not enough to flip s = 0.4) and
  # 0.3 in 20: PGD-10 and PGD-20 disagree on every example.
  result = sanity.check_pgd_steps_converged(linear, X, Y, KEY, eps=EPS, batch_size=BATCH,
                                            steps=10, step_ratio=step_ratio)
  _assert_verdict(result, passed)


@pytest.mark.parametrize('model,passed', [(linear, True), (bump_model, False)])
def test_large_eps(model, passed):
  result = sanity.check_large_eps(model, X, Y, KEY, large_eps=LARGE_EPS, batch_size=BATCH)
  _assert_verdict(result, passed)


@pytest.mark.parametrize('model,passed', [(linear, True), (argmax_model, False)])
def test_zero_gradients(model, passed):
  result = sanity.check_zero_gradients(model, X, Y, batch_size=BATCH)
  _assert_verdict(result, passed)
  assert result.value == (0.0 if passed else 1.0)


@pytest.mark.parametrize('model,passed', [
    (linear, True),
    (lambda x: jax.nn.log_softmax(linear(x)), True),  # log-probabilities are valid logits
    (softmax_model, False),
    (lambda x: jax.nn.sigmoid(linear(x)), False),
])
def test_outputs_are_logits(model, passed):
  _assert_verdict(sanity.check_outputs_are_logits(model, X, batch_size=BATCH), passed)


@pytest.mark.parametrize('model,passed', [
    (linear, True), (jax.jit(linear), True), (noisy_model(), False)])
def test_deterministic(model, passed):
  _assert_verdict(sanity.check_deterministic(model, X, batch_size=BATCH), passed)


@pytest.mark.parametrize('model,passed', [(linear, True), (batch_normalised, False)])
def test_batch_independent(model, passed):
  _assert_verdict(sanity.check_batch_independent(model, X, batch_size=BATCH), passed)


def _inside_ball():
  return np.asarray(attacks.pgd(linear, X, Y, KEY, eps=EPS, steps=5, step_size=EPS / 4))


@pytest.mark.parametrize('make_adv,passed', [
    (_inside_ball, True),
    (lambda: np.clip(X + 1.5 * EPS, 0, 1), False),                # outside the eps-ball
    (lambda: np.clip(X + EPS, X - EPS, X + EPS), False),          # above 1
    (lambda: np.where(np.arange(N)[:, None, None, None] == 3, np.nan, X), False),
])
def test_perturbations(make_adv, passed):
  result = sanity.check_perturbations(X, {'fgsm': X.copy(), 'attack': make_adv()}, EPS)
  _assert_verdict(result, passed)
  if not passed:
    assert '(attack)' in result.detail


# --- comparisons on hand-made numbers: the boundaries ----------------------------------------


def test_monotone_result_reports_the_largest_rise():
  assert sanity.monotone_result([0, 0.1, 0.2], [0.9, 0.9, 0.5]).passed
  result = sanity.monotone_result([0.2, 0, 0.1], [0.6, 0.9, 0.5])  # grid in any order
  assert not result.passed and result.value == pytest.approx(10.0)


def test_steps_converged_result_is_strict_at_the_tolerance():
  assert sanity.steps_converged_result(0.900, 0.896, steps=10).passed
  assert not sanity.steps_converged_result(0.900, 0.895, steps=10).passed


def test_pgd_vs_fgsm_and_large_eps_results():
  assert sanity.pgd_vs_fgsm_result(0.90, 0.90).passed
  assert not sanity.pgd_vs_fgsm_result(0.9001, 0.90).passed
  assert sanity.large_eps_result(0.10, eps=0.5).passed
  assert not sanity.large_eps_result(0.11, eps=0.5).passed


def test_format_check():
  result = sanity.CheckResult('pgd_not_weaker_than_fgsm', True, -5.2,
                              'PGD-20 90.10% <= FGSM 95.30%')
  assert sanity.format_check(result) == (
      'pass  pgd_not_weaker_than_fgsm: PGD-20 90.10% <= FGSM 95.30%')
  failed = dataclasses.replace(result, passed=False)
  assert sanity.format_check(failed).startswith('FAIL  pgd_not_weaker_than_fgsm: ')


# --- all together ----------------------------------------------------------------------------

NAMES = ['eps_zero_equals_clean', 'accuracy_monotone_in_eps', 'pgd_not_weaker_than_fgsm',
         'pgd_steps_converged', 'large_eps_breaks_model', 'zero_input_gradients',
         'outputs_are_logits', 'forward_deterministic', 'batch_independent',
         'perturbations_in_threat_model']


def test_run_checks_all_pass_on_the_normal_model():
  results = sanity.run_checks(linear, X, Y, KEY, eps=EPS, large_eps=LARGE_EPS, pgd_steps=5,
                              batch_size=BATCH, adversarials={'pgd': _inside_ball()})
  assert [r.name for r in results] == NAMES
  assert all(r.passed for r in results), '\n'.join(map(sanity.format_check, results))


def test_run_checks_flags_only_what_is_wrong():
  results = sanity.run_checks(bump_model, X, Y, KEY, eps=EPS, large_eps=LARGE_EPS, pgd_steps=5,
                              batch_size=BATCH,
                              adversarials={'bad': np.clip(X + 1.5 * EPS, 0, 1)})
  failed = {r.name for r in results if not r.passed}
  assert failed == {'pgd_not_weaker_than_fgsm', 'large_eps_breaks_model',
                    'perturbations_in_threat_model'}, '\n'.join(map(sanity.format_check, results))


def test_square_after_gradient_counts_what_only_the_score_attack_broke():
  correct = {'clean': np.array([1, 1, 1, 1, 0], bool),
             'pgd100': np.array([1, 1, 1, 0, 0], bool),
             'apgd-ce': np.array([1, 1, 1, 1, 0], bool),
             'square': np.array([1, 0, 1, 1, 0], bool)}
  result = sanity.square_after_gradient_result(correct, ['pgd100', 'apgd-ce'], ['square'])
  # Examples 0-2 survive both gradient attacks; Square breaks example 1: 1 of 5 = 20 pp.
  assert result.value == pytest.approx(20.0) and not result.passed
  assert 'broke 1 of the 3' in result.detail
  correct['square'] = correct['pgd100'].copy()
  result = sanity.square_after_gradient_result(correct, ['pgd100', 'apgd-ce'], ['square'])
  assert result.value == 0.0 and result.passed


def test_the_checks_pgd_keeps_each_examples_best_iterate_as_the_rows_do():
  """On the linear model PGD at eps 0.3 misclassifies an image early and keeps moving: the
  checks' PGD must return that first misclassified iterate (evaluate.py's rule), not the
  last one, which a masked model can bring back to the right class."""
  x, y = jnp.asarray(X), jnp.asarray(Y)
  checks_pgd = sanity.pgd_attack(10)(linear, x, y, KEY, EPS)
  step = sanity.default_step_ratio(10) * EPS
  best = attacks.pgd(linear, x, y, KEY, eps=EPS, steps=10, step_size=step, best_iterate=True)
  last = attacks.pgd(linear, x, y, KEY, eps=EPS, steps=10, step_size=step)
  np.testing.assert_array_equal(np.asarray(checks_pgd), np.asarray(best))
  assert np.any(np.abs(np.asarray(best) - np.asarray(last)) > 1e-3)
