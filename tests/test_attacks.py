"""Attacks: threat-model invariants and known answers on a hand-built linear model."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from l2lda_jax import attacks
from l2lda_jax.models import LeNet5

EPS = 0.3


def _lenet_logits_fn():
  model = LeNet5()
  variables = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 28, 28, 1)))
  return lambda x: model.apply(variables, x)


def _images(n=8, seed=0):
  # Include saturated pixels so that the [0, 1] clip matters.
  x = jax.random.uniform(jax.random.PRNGKey(seed), (n, 28, 28, 1))
  return jnp.round(x * 1.4 - 0.2).clip(0, 1) * 0.5 + x * 0.5


ATTACKS = {
    'fgsm': functools.partial(attacks.fgsm, eps=EPS),
    'pgd': functools.partial(attacks.pgd, eps=EPS, steps=5, step_size=0.1),
    'pgd_unrolled': functools.partial(attacks.pgd, eps=EPS, steps=3, step_size=0.1,
                                      unroll=True),
    'cw': functools.partial(attacks.cw, eps=EPS, steps=5, learning_rate=0.1),
}


@pytest.mark.parametrize('name', sorted(ATTACKS))
def test_attack_stays_in_eps_ball_and_pixel_box(name):
  x = _images()
  y = jnp.arange(8) % 10
  x_adv = ATTACKS[name](_lenet_logits_fn(), x, y, jax.random.PRNGKey(1))
  assert x_adv.shape == x.shape
  assert float(jnp.max(jnp.abs(x_adv - x))) <= EPS + 1e-6
  assert float(x_adv.min()) >= 0.0 and float(x_adv.max()) <= 1.0
  assert float(jnp.max(jnp.abs(x_adv - x))) > 0.0  # it did move


def test_margin_loss_on_hand_made_logits():
  logits = jnp.array([[3.0, 1.0, 2.0], [0.0, 5.0, 1.0], [1.0, 1.0, 4.0]])
  labels = jnp.array([0, 2, 2])
  # Z_y - max_{j != y} Z_j, floored at 0: 3-2=1; 1-5<0 -> 0; 4-1=3.
  np.testing.assert_allclose(attacks.margin(logits, labels), [1.0, 0.0, 3.0])


def test_cross_entropy_on_hand_made_logits():
  logits = jnp.array([[0.0, 0.0], [jnp.log(3.0), 0.0]])
  labels = jnp.array([0, 0])
  np.testing.assert_allclose(attacks.cross_entropy(logits, labels),
                             [np.log(2.0), np.log(4.0 / 3.0)], rtol=1e-6)


def test_projection_clips_ball_then_box():
  x = jnp.array([0.1, 0.5, 0.95])
  x_adv = jnp.array([-1.0, 0.9, 2.0])
  np.testing.assert_allclose(attacks.project_linf(x_adv, x, 0.3), [0.0, 0.8, 1.0])


def _linear_task(n=64):
  """Class 0 when the left half is brighter than the right, by a gap of 0.4.

  The linear model s = mean(left) - mean(right) is 100% accurate on clean data,
  and an eps=0.3 Linf attack can move s by 0.6 > 0.4, so a working attack breaks
  every example.
  """
  key1, key2 = jax.random.split(jax.random.PRNGKey(0))
  y = jax.random.bernoulli(key1, 0.5, (n,)).astype(jnp.int32)
  base = jax.random.uniform(key2, (n, 8, 8, 1), minval=0.3, maxval=0.7)
  sign = jnp.where(y == 0, 1.0, -1.0)[:, None, None, None]
  left = jnp.arange(8)[None, None, :, None] < 4
  x = base + jnp.where(left, 0.2, -0.2) * sign
  x = x.at[:, :, :4].set(x[:, :, :4] - jnp.mean(base[:, :, :4], (1, 2, 3), keepdims=True)
                         + 0.5)
  x = x.at[:, :, 4:].set(x[:, :, 4:] - jnp.mean(base[:, :, 4:], (1, 2, 3), keepdims=True)
                         + 0.5)

  def logits_fn(images):
    s = jnp.mean(images[:, :, :4], (1, 2, 3)) - jnp.mean(images[:, :, 4:], (1, 2, 3))
    return jnp.stack([s, -s], axis=-1)

  return logits_fn, x, y


def _accuracy(logits_fn, x, y):
  return float(jnp.mean(jnp.argmax(logits_fn(x), -1) == y))


@pytest.mark.parametrize('name,attack', [
    ('fgsm', functools.partial(attacks.fgsm, eps=EPS)),
    ('pgd', functools.partial(attacks.pgd, eps=EPS, steps=10, step_size=EPS / 4)),
    ('cw', functools.partial(attacks.cw, eps=EPS, steps=100, learning_rate=0.01)),
])
def test_attack_breaks_an_undefended_linear_model(name, attack):
  logits_fn, x, y = _linear_task()
  assert _accuracy(logits_fn, x, y) == 1.0
  x_adv = attack(logits_fn, x, y, jax.random.PRNGKey(3))
  assert _accuracy(logits_fn, x_adv, y) == 0.0, name


def test_small_eps_cannot_break_the_linear_model():
  """The same attack with eps below half the gap (0.4 / 2) must leave every example intact."""
  logits_fn, x, y = _linear_task()
  x_adv = attacks.pgd(logits_fn, x, y, jax.random.PRNGKey(3), eps=0.15, steps=10,
                      step_size=0.05)
  assert _accuracy(logits_fn, x_adv, y) == 1.0


def test_pgd_is_deterministic_for_a_key_and_random_for_another():
  logits_fn = _lenet_logits_fn()
  x, y = _images(), jnp.zeros(8, jnp.int32)
  run = lambda k: attacks.pgd(logits_fn, x, y, jax.random.PRNGKey(k), eps=EPS, steps=2,
                              step_size=0.05)
  np.testing.assert_array_equal(run(0), run(0))
  assert not np.allclose(run(0), run(1))


# ----------------------------------------------------------------------------- evaluation attacks
def _mlp(params, images):
  hidden = jnp.tanh(images.reshape(images.shape[0], -1) @ params['w1'] + params['b1'])
  return hidden @ params['w2'] + params['b2']


def _mlp_params(in_dim, classes, hidden=32, seed=0):
  key1, key2 = jax.random.split(jax.random.PRNGKey(seed))
  return {'w1': jax.random.normal(key1, (in_dim, hidden)) / np.sqrt(in_dim),
          'b1': jnp.zeros(hidden),
          'w2': jax.random.normal(key2, (hidden, classes)) / np.sqrt(hidden),
          'b2': jnp.zeros(classes)}


def _tiny_logits_fn():
  """A random (untrained) MLP on 28 x 28 images: cheap to compile, non-linear."""
  params = _mlp_params(28 * 28, 10)
  return lambda x: _mlp(params, x)


def _prototype_task(n, seed, classes=4):
  """4 classes on 8 x 8 images: prototype 0.5 +- 0.05 per pixel plus uniform noise +-0.15.

  A clean-trained model separates the classes by summing many faint pixels, so it
  is not robust: eps = 0.04 breaks about half of it, eps = 0.1 all of it.
  """
  key_labels, key_noise = jax.random.split(jax.random.PRNGKey(seed))
  pixels = jax.random.bernoulli(jax.random.PRNGKey(99), 0.5, (classes, 8, 8, 1))
  prototypes = 0.5 + jnp.where(pixels, 0.05, -0.05)
  y = jax.random.randint(key_labels, (n,), 0, classes)
  noise = jax.random.uniform(key_noise, (n, 8, 8, 1), minval=-0.15, maxval=0.15)
  return jnp.clip(prototypes[y] + noise, 0.0, 1.0), y


@pytest.fixture(scope='module')
def plain_model():
  """A tiny MLP trained on clean data only (Adam, full batch), and 64 test examples."""
  x_train, y_train = _prototype_task(256, seed=0)
  optimizer = optax.adam(1e-2)

  def train(params):
    def step(_, carry):
      params, opt_state = carry
      grads = jax.grad(lambda p: jnp.mean(attacks.cross_entropy(_mlp(p, x_train), y_train)))(
          params)
      updates, opt_state = optimizer.update(grads, opt_state)
      return optax.apply_updates(params, updates), opt_state

    return jax.lax.fori_loop(0, 150, step, (params, optimizer.init(params)))[0]

  params = jax.jit(train)(_mlp_params(64, 4))
  x, y = _prototype_task(64, seed=1)
  logits_fn = lambda images: _mlp(params, images)
  assert _accuracy(logits_fn, x, y) >= 0.95  # the attacks below start from a good model
  return logits_fn, x, y


EVAL_ATTACKS = {
    'fgsm_targeted_margin': functools.partial(
        attacks.fgsm, eps=EPS, loss='margin', targets=(jnp.arange(8) + 1) % 10),
    'pgd_restarts_best': functools.partial(attacks.pgd, eps=EPS, steps=3, step_size=0.1,
                                           restarts=2, best_iterate=True),
    'pgd_targeted_ce': functools.partial(attacks.pgd, eps=EPS, steps=3, step_size=0.1,
                                         targets=(jnp.arange(8) + 3) % 10),
    'pgd_margin_restarts': functools.partial(attacks.pgd, eps=EPS, steps=3, step_size=0.1,
                                             loss='margin', restarts=2),
    'mi_fgsm': functools.partial(attacks.mi_fgsm, eps=EPS, steps=3),
    'mi_fgsm_best_unrolled': functools.partial(attacks.mi_fgsm, eps=EPS, steps=3,
                                               best_iterate=True, unroll=True),
    'cw_best': functools.partial(attacks.cw, eps=EPS, steps=3, learning_rate=0.1,
                                 best_iterate=True),
}


@pytest.mark.parametrize('name', sorted(EVAL_ATTACKS))
def test_evaluation_attack_stays_in_eps_ball_and_pixel_box(name):
  x = _images()
  y = jnp.arange(8) % 10
  x_adv = EVAL_ATTACKS[name](_tiny_logits_fn(), x, y, jax.random.PRNGKey(1))
  assert x_adv.shape == x.shape and x_adv.dtype == x.dtype
  assert float(jnp.max(jnp.abs(x_adv - x))) <= EPS + 1e-6
  assert float(x_adv.min()) >= 0.0 and float(x_adv.max()) <= 1.0
  assert float(jnp.max(jnp.abs(x_adv - x))) > 0.0  # it did move


def test_targeted_margin_on_hand_made_logits():
  logits = jnp.array([[3.0, 1.0, 2.0], [0.0, 5.0, 1.0], [1.0, 1.0, 4.0]])
  targets = jnp.array([1, 1, 0])
  # max_{j != t} Z_j - Z_t, floored at 0: 3-1=2; 1-5<0 -> 0 (t already wins); 4-1=3.
  np.testing.assert_allclose(attacks.targeted_margin(logits, targets), [2.0, 0.0, 3.0])


def test_attack_objective_signs_on_hand_made_logits():
  """The objective is what every attack ascends: +CE / -margin untargeted, -CE / -margin to t."""
  logits = jnp.array([[3.0, 1.0, 2.0], [0.0, 5.0, 1.0]])
  labels = jnp.array([0, 2])
  ce = np.asarray(attacks.cross_entropy(logits, labels))
  np.testing.assert_allclose(attacks.attack_objective('ce')(logits, labels), ce)
  np.testing.assert_allclose(attacks.attack_objective('ce', targeted=True)(logits, labels), -ce)
  np.testing.assert_allclose(attacks.attack_objective('margin')(logits, labels), [-1.0, 0.0])
  # Targeted at labels: class 0 already wins for row 0 (0), row 1 needs 5 - 1 = 4.
  np.testing.assert_allclose(
      attacks.attack_objective('margin', targeted=True)(logits, labels), [0.0, -4.0])
  with pytest.raises(ValueError, match='hinge'):
    attacks.attack_objective('hinge')


def _reference_pgd(logits_fn, x, y, key, eps, steps, step_size):
  """The training-time PGD as it was before the evaluation options (a frozen copy)."""
  grad_fn = jax.grad(lambda v: jnp.sum(attacks.cross_entropy(logits_fn(v), y)))
  x_adv = attacks.random_start(key, x, eps)
  step = lambda _, v: attacks.project_linf(v + step_size * jnp.sign(grad_fn(v)), x, eps)
  return jax.lax.fori_loop(0, steps, step, x_adv)


def test_training_time_pgd_is_unchanged(plain_model):
  logits_fn, x, y = plain_model
  key = jax.random.PRNGKey(5)
  new = attacks.pgd(logits_fn, x, y, key, eps=0.04, steps=4, step_size=0.01)
  np.testing.assert_array_equal(new, _reference_pgd(logits_fn, x, y, key, 0.04, 4, 0.01))


def _broken(logits_fn, x_adv, y):
  return np.asarray(jnp.argmax(logits_fn(x_adv), -1) != y)


def test_restarts_and_best_iterate_are_never_weaker_than_plain_pgd(plain_model):
  """Restart 0 uses the same key as plain PGD, and plain PGD's last iterate is one of its
  candidates, so every example plain PGD breaks stays broken (exact subset, fixed seed)."""
  logits_fn, x, y = plain_model
  key = jax.random.PRNGKey(0)
  pgd5 = functools.partial(attacks.pgd, logits_fn, x, y, key, eps=0.04, steps=5,
                           step_size=0.01)
  plain = _broken(logits_fn, pgd5(), y)
  assert 0 < plain.sum() < len(y)  # the eps leaves room to do better, so the check has teeth
  for options in [dict(best_iterate=True), dict(restarts=3),
                  dict(restarts=3, best_iterate=True)]:
    stronger = _broken(logits_fn, pgd5(**options), y)
    assert np.all(stronger[plain]), options  # broken by plain => broken by the stronger one
    assert stronger.sum() >= plain.sum()


def _valley(images):
  """Class 0 logit z = (v - 0.5)^2 - 0.005 against 0 for class 1, v = the one pixel.

  Misclassified only for |v - 0.5| < 0.07: an attack that overshoots the valley
  ends correctly classified after passing through a misclassified iterate.
  """
  z = (images[:, 0, 0, 0] - 0.5) ** 2 - 0.005
  return jnp.stack([z, jnp.zeros_like(z)], axis=-1)


@pytest.mark.parametrize('name,attack', [
    # 0.3 -> 0.45 (misclassified) -> 0.6 (correct)
    ('pgd', functools.partial(attacks.pgd, eps=0.3, steps=2, step_size=0.15,
                              random_init=False)),
    # Adam's momentum carries 0.3 -> 0.40 -> 0.49 (misclassified) -> ... -> 0.6 (correct)
    ('cw', functools.partial(attacks.cw, eps=0.3, steps=5, learning_rate=0.1)),
    ('mi_fgsm', functools.partial(attacks.mi_fgsm, eps=0.3, steps=2, step_size=0.15)),
])
def test_best_iterate_keeps_the_misclassified_iterate(name, attack):
  x, y = jnp.full((1, 1, 1, 1), 0.3), jnp.zeros(1, jnp.int32)
  last = attack(_valley, x, y, None)
  assert not _broken(_valley, last, y)[0], name  # the last iterate is classified correctly
  best = attack(_valley, x, y, None, best_iterate=True)
  assert _broken(_valley, best, y)[0], name
  assert abs(float(best[0, 0, 0, 0]) - 0.5) < 0.07


def test_pgd100_brings_a_plain_trained_model_near_zero(plain_model):
  logits_fn, x, y = plain_model
  x_adv = attacks.pgd(logits_fn, x, y, jax.random.PRNGKey(0), eps=0.1, steps=100,
                      step_size=0.1 / 12)
  assert _accuracy(logits_fn, x_adv, y) <= 0.05


def test_mi_fgsm_breaks_a_plain_trained_model(plain_model):
  logits_fn, x, y = plain_model
  x_adv = attacks.mi_fgsm(logits_fn, x, y, eps=0.1, steps=10)
  assert float(jnp.max(jnp.abs(x_adv - x))) <= 0.1 + 1e-6
  assert _accuracy(logits_fn, x_adv, y) <= 0.05


@pytest.mark.parametrize('loss', ['ce', 'margin'])
def test_targeted_pgd_reaches_the_target_class(plain_model, loss):
  """Descending the loss towards t (not ascending it) makes most predictions equal t."""
  logits_fn, x, y = plain_model
  targets = (y + 1) % 4
  x_adv = attacks.pgd(logits_fn, x, y, jax.random.PRNGKey(0), eps=0.1, steps=20,
                      step_size=0.01, loss=loss, targets=targets)
  assert float(jnp.mean(jnp.argmax(logits_fn(x_adv), -1) == targets)) >= 0.9
