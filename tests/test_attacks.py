"""Attacks: threat-model invariants and known answers on a hand-built linear model."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
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
