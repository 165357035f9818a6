"""AdvGAN and GAP: shapes, the threat model, gradients, and that training makes them attack."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import advgan as advgan_config
from configs import gap as gap_config
from l2lda_jax.attacks import generative as ga
from l2lda_jax.attacks.generative_nets import (AdvGANDiscriminator, AdvGANGenerator,
                                                GAPGenerator)

CONFIGS = {'advgan': advgan_config, 'gap': gap_config}
SIZES = {'mnist': ((28, 28, 1), 0.3), 'cifar10': ((32, 32, 3), 8 / 255)}
# Each compiled test costs seconds of a shared 2-core CPU: the value tests run each attack at
# one size (both sizes and both eps are covered across the two); shapes are checked for all.
VALUE_SIZE = {'advgan': 'mnist', 'gap': 'cifar10'}


def _images(shape, n=4, seed=0):
  # Half the pixels saturated at 0 or 1, so that the [0, 1] clip matters.
  x = jax.random.uniform(jax.random.PRNGKey(seed), (n,) + shape)
  return jnp.where(x < 0.25, 0.0, jnp.where(x > 0.75, 1.0, x))


@functools.lru_cache(maxsize=None)
def _state(kind, shape):
  """Initial parameters of the smoke config, shared by the tests (each init compiles)."""
  return ga.init_state(kind, CONFIGS[kind].get_config('smoke'), shape, jax.random.PRNGKey(0))


def _attack(kind, shape, eps):
  generator, _ = ga.make_networks(kind, CONFIGS[kind].get_config('smoke'))
  return ga.GenerativeAttack(kind, generator, _state(kind, shape)['g'], eps)


@pytest.mark.parametrize('variant', ['', 'smoke'])
@pytest.mark.parametrize('kind', sorted(CONFIGS))
def test_configs_load(kind, variant):
  config = CONFIGS[kind].get_config(variant)
  assert config.kind == kind
  assert config.steps > 0 and config.batch_size > 0
  with pytest.raises(ValueError, match='unknown variant'):
    CONFIGS[kind].get_config('nope')


@pytest.mark.parametrize('size', sorted(SIZES))
def test_output_shapes(size):
  """Shapes only: eval_shape traces without compiling (this CPU is shared and slow)."""
  shape, _ = SIZES[size]
  x = jax.ShapeDtypeStruct((3,) + shape, jnp.float32)
  for module, expected in ((AdvGANGenerator(), x.shape), (GAPGenerator(), x.shape),
                           (AdvGANDiscriminator(), (3,))):
    variables = jax.eval_shape(module.init, jax.random.PRNGKey(0), x)
    assert set(variables) == {'params'}  # no batch statistics: per-example outputs
    assert jax.eval_shape(module.apply, variables, x).shape == expected, type(module).__name__


def test_odd_sizes_are_refused():
  with pytest.raises(ValueError, match='multiples of 4'):
    jax.eval_shape(AdvGANGenerator().init, jax.random.PRNGKey(0), jnp.zeros((1, 30, 30, 1)))


@pytest.mark.parametrize('kind', sorted(CONFIGS))
def test_x_adv_in_eps_ball_and_pixel_box(kind):
  shape, eps = SIZES[VALUE_SIZE[kind]]
  attack = _attack(kind, shape, eps)
  x = _images(shape)
  run = jax.jit(lambda v: attack(None, v, None, None))  # the attack ignores model, y, key
  x_adv = run(x)
  assert x_adv.shape == x.shape
  assert float(jnp.max(jnp.abs(x_adv - x))) <= eps + 1e-6
  assert float(x_adv.min()) >= 0.0 and float(x_adv.max()) <= 1.0
  assert float(jnp.max(jnp.abs(x_adv - x))) > 0.0
  if kind == 'gap':  # GAP's scaling spends the whole budget: ||delta||_inf = eps
    mid = (x > 0) & (x < 1)
    assert float(jnp.max(jnp.where(mid, jnp.abs(x_adv - x), 0.0))) > 0.5 * eps
  # Instance norm: an image's perturbation does not depend on the rest of its batch
  # (the evaluation pads its last batch with copies of one image).
  others = x.at[1:].set(_images(shape, seed=1)[1:])
  np.testing.assert_allclose(run(others)[0], x_adv[0], atol=1e-6)


def test_scale_to_linf_is_exact_per_example():
  g = jnp.array([[1.0, -4.0], [0.5, 0.25]]).reshape(2, 1, 2, 1)
  scaled = ga.scale_to_linf(g, 0.3)
  np.testing.assert_allclose(jnp.max(jnp.abs(scaled), axis=(1, 2, 3)), [0.3, 0.3], rtol=1e-6)


def test_losses_on_hand_made_logits():
  logits = jnp.array([[3.0, 1.0, 2.0], [0.0, 5.0, 1.0]])
  labels = jnp.array([0, 2])
  # Margins 3 - 2 = 1 and 1 - 5 = -4; kappa = 2 floors the second at -2.
  np.testing.assert_allclose(ga.advgan_adv_loss(logits, labels, 2.0), (1.0 - 2.0) / 2)
  p = jax.nn.softmax(logits)
  np.testing.assert_allclose(ga.fool_loss(logits, labels),
                             -np.mean(np.log(1 - np.array([p[0, 0], p[1, 2]]))), rtol=1e-5)
  # Least likely classes of the "clean" logits: 1 and 0.
  expected = np.log(np.mean(-np.log([p[0, 1], p[1, 0]])))
  np.testing.assert_allclose(ga.least_likely_loss(logits, logits), expected, rtol=1e-5)
  delta = jnp.full((2, 2, 2, 1), 0.5)  # L2 norm 1
  np.testing.assert_allclose(ga.hinge_loss(delta, 0.25), 0.75, rtol=1e-5)
  np.testing.assert_allclose(ga.hinge_loss(delta, 2.0), 0.0)


@pytest.mark.parametrize('kind', sorted(CONFIGS))
def test_generator_gradients_are_finite_and_nonzero(kind):
  # A 10-class linear model: cheap to compile, and every pixel matters.
  shape, eps = SIZES[VALUE_SIZE[kind]]
  weights = jax.random.normal(jax.random.PRNGKey(1), (int(np.prod(shape)), 10))
  logits_fn = lambda v: v.reshape(v.shape[0], -1) @ weights
  config = CONFIGS[kind].get_config('smoke')
  state = _state(kind, shape)
  generator, discriminator = ga.make_networks(kind, config)
  x = _images(shape, n=8)
  y = jnp.argmax(logits_fn(x), -1)  # all classified correctly: L_adv's floor is inactive

  def loss_fn(params):
    return ga.generator_loss(kind, config, params, generator=generator, logits_fn=logits_fn,
                             x=x, y=y, eps=eps, discriminator=discriminator,
                             d_params=state.get('d'))[0]

  grads = jax.jit(jax.grad(loss_fn))(state['g'])
  for path, leaf in jax.tree_util.tree_leaves_with_path(grads):
    name = jax.tree_util.keystr(path)
    assert bool(jnp.all(jnp.isfinite(leaf))), name
    assert float(jnp.max(jnp.abs(leaf))) > 0.0, name


# ----------------------------------------------------------------------------- training
def _linear_task(n=256, size=8, seed=0):
  """Class 0 when the left half is brighter than the right by 0.4 (tests/test_attacks.py).

  s = mean(left) - mean(right) is +-0.4 exactly, so the model is 100% accurate on clean
  images; an image-dependent eps = 0.3 perturbation (left -eps, right +eps for class 0)
  moves s by 0.6 and breaks every image, while no single fixed pattern breaks both classes.
  """
  rng = np.random.default_rng(seed)
  y = rng.integers(0, 2, n).astype(np.int32)
  x = rng.uniform(0.3, 0.7, (n, size, size, 1)).astype(np.float32)
  gap = np.where(y == 0, 0.2, -0.2)[:, None, None, None]
  half = size // 2
  x[:, :, :half] += 0.5 + gap - x[:, :, :half].mean((1, 2, 3), keepdims=True)
  x[:, :, half:] += 0.5 - gap - x[:, :, half:].mean((1, 2, 3), keepdims=True)
  return x, y


def _linear_logits(images):
  half = images.shape[2] // 2
  s = jnp.mean(images[:, :, :half], (1, 2, 3)) - jnp.mean(images[:, :, half:], (1, 2, 3))
  return jnp.stack([s, -s], axis=-1) * 10.0


@pytest.mark.parametrize('kind', sorted(CONFIGS))
def test_smoke_training_lowers_accuracy_and_loss(kind):
  x, y = _linear_task()
  accuracy = lambda images: float(np.mean(np.argmax(_linear_logits(images), -1) == y))
  assert accuracy(x) == 1.0
  config = CONFIGS[kind].get_config('smoke')
  config.log_every_steps = 1  # the first line then reports the untrained generator
  lines = []
  attack = ga.train_generative_attack(kind, config, _linear_logits,
                                      (x * 255).round().astype(np.uint8), y, eps=0.3,
                                      key=jax.random.PRNGKey(0), log_fn=lines.append)
  assert len(lines) == len(attack.history) == config.steps and lines[-1].startswith(kind)
  first, last = attack.history[0], attack.history[-1]
  assert last['step'] == config.steps
  assert last['loss_adv'] < first['loss_adv'], attack.history
  x_adv = jax.jit(attack.perturb)(jnp.asarray(x))
  assert float(jnp.max(jnp.abs(x_adv - x))) <= 0.3 + 1e-6
  assert accuracy(x_adv) < 0.6, attack.history


def test_config_kind_must_match():
  with pytest.raises(ValueError, match='does not match'):
    ga.train_generative_attack('gap', advgan_config.get_config('smoke'), _linear_logits,
                               *_linear_task(8), eps=0.3, key=jax.random.PRNGKey(0))
