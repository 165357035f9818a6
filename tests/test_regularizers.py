"""GradAlign's penalty: known answers, its gradient in the parameters, and the train steps."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import mnist
from l2lda_jax import regularizers, train
from l2lda_jax.models import create_classifier

EPS = 0.3
KEY = jax.random.PRNGKey(3)


def _images(n=6, shape=(4, 4, 1)):
  return jax.random.uniform(jax.random.PRNGKey(0), (n,) + shape, minval=0.35, maxval=0.65)


def test_a_binary_linear_model_has_aligned_gradients_everywhere():
  """grad_x CE = (p_1 - y) w: the same direction at every point for a fixed label."""
  w = jax.random.normal(jax.random.PRNGKey(1), (16,))
  logits_fn = lambda v: jnp.stack([jnp.zeros(v.shape[0]), v.reshape(v.shape[0], -1) @ w], -1)
  labels = jnp.array([0, 1, 0, 1, 1, 0])
  penalty = regularizers.gradient_misalignment(logits_fn, _images(), labels, EPS, KEY)
  assert float(penalty) == pytest.approx(0.0, abs=1e-6)


def test_a_quadratic_model_matches_the_hand_computed_cosine():
  """logit_1 = -||x - 0.5||^2: grad_x CE = (p_1 - y) * -2 (x - 0.5), by hand at x and at
  x + eta (the same eta the function draws from KEY)."""
  logits_fn = lambda v: jnp.stack(
      [jnp.zeros(v.shape[0]), -jnp.sum((v - 0.5) ** 2, axis=(1, 2, 3))], -1)
  x, labels = _images(), jnp.array([1, 1, 0, 0, 1, 0])
  near = jnp.clip(x + jax.random.uniform(KEY, x.shape, x.dtype, -EPS, EPS), 0.0, 1.0)

  def by_hand(v):
    p1 = jax.nn.sigmoid(-jnp.sum((v - 0.5) ** 2, axis=(1, 2, 3)))
    return ((p1 - labels)[:, None] * -2 * (v - 0.5).reshape(v.shape[0], -1))

  a, b = np.asarray(by_hand(x)), np.asarray(by_hand(near))
  cos = np.sum(a * b, 1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
  penalty = regularizers.gradient_misalignment(logits_fn, x, labels, EPS, KEY)
  assert float(penalty) == pytest.approx(float(np.mean(1 - cos)), rel=1e-5)
  assert float(penalty) > 0.1  # eta is as large as x - 0.5: the gradients turn


def test_the_penalty_has_a_gradient_in_the_parameters():
  model = create_classifier('lenet5')
  x = jax.random.uniform(jax.random.PRNGKey(0), (4, 28, 28, 1))
  params = jax.jit(model.init)(jax.random.PRNGKey(1), x)['params']
  penalty = regularizers.grad_align_penalty(1.0, model, {}, x, jnp.arange(4), EPS, KEY)
  grads = jax.jit(jax.grad(penalty))(params)  # eagerly, every op compiles on its own: 30 s
  norms = [float(jnp.linalg.norm(g)) for g in jax.tree_util.tree_leaves(grads)]
  assert all(np.isfinite(norms)) and sum(norms) > 0
  assert regularizers.grad_align_penalty(0.0, model, {}, x, jnp.arange(4), EPS, KEY) is None


def _adversarial_step(method: str, weight: float):
  config = mnist.get_config('smoke')
  config.method = method
  config.train.grad_align_weight = weight
  config.conv_impl = 'native'  # half the compile time; the penalty is the same either way
  model = create_classifier(config.model, conv_impl=config.conv_impl)
  tx = train.make_optimizer(config.train)
  state = train.create_train_state(config, model, tx, (28, 28, 1), 10)
  _, step = train.make_train_steps(config, model, tx, 10, 1)
  images = jax.random.randint(jax.random.PRNGKey(0), (4, 28, 28, 1), 0, 256,
                              jnp.int32).astype(jnp.uint8)
  return step(state, images, jnp.arange(4))


def test_a_weight_changes_the_pgd_update_and_is_logged():
  plain_state, plain_metrics = _adversarial_step('pgd', 0.0)
  state, metrics = _adversarial_step('pgd', 1.0)
  assert 'grad_align_penalty' not in plain_metrics
  assert 0.0 <= float(metrics['grad_align_penalty']) <= 2.0  # 1 - cos
  # The CE is the same (same key, same starting state); the update is not.
  assert float(metrics['loss']) == pytest.approx(float(plain_metrics['loss']), rel=1e-5)
  changed = [not np.allclose(a, b) for a, b in zip(jax.tree_util.tree_leaves(state.params),
                                                    jax.tree_util.tree_leaves(plain_state.params))]
  assert any(changed)


def test_the_l2lda_game_step_adds_and_logs_the_penalty():
  """One compile only (the game step is the suite's costliest program); that weight 0
  leaves the game as it was is what every other L2L-DA test runs."""
  state, metrics = _adversarial_step('l2lda', 1.0)
  assert 0.0 <= float(metrics['grad_align_penalty']) <= 2.0
  assert np.isfinite(float(metrics['loss'])) and int(state.step) == 1


def test_a_zero_input_gradient_gives_a_finite_penalty_gradient():
  """A classifier so confident that its CE gradient is exactly 0 in float32 (the run that
  found this diverged to NaN): cos is 0 there and the update stays finite."""
  w = jnp.ones((16,))

  def penalty(scale):
    logits_fn = lambda v: jnp.stack([jnp.zeros(v.shape[0]),
                                     scale * (v.reshape(v.shape[0], -1) @ w)], -1)
    return regularizers.gradient_misalignment(logits_fn, _images(2), jnp.array([1, 1]),
                                              EPS, KEY)

  assert float(jax.nn.sigmoid(1e4 * 16 * 0.35)) == 1.0  # p_1 rounds to 1: gradient exactly 0
  value, grad = jax.value_and_grad(penalty)(1e4)
  assert float(value) == pytest.approx(1.0) and np.isfinite(float(grad))
