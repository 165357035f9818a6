"""The recursive attack of paper Eq. 5 on toy generators with known answers."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from l2lda_jax.attacks import learned

EPS = 0.3


def _classifier():
  """A small nonlinear classifier, so that input gradients depend on the input."""
  w1 = jax.random.normal(jax.random.PRNGKey(10), (6 * 6 * 1, 16)) * 0.5
  w2 = jax.random.normal(jax.random.PRNGKey(11), (16, 3))
  return lambda x: jnp.tanh(x.reshape(x.shape[0], -1) @ w1) @ w2


def _toy_generator(params):
  """A 1x1 'conv' of the inputs plus a z term: G = inputs @ W + (z @ V) per pixel."""

  def generator_fn(inputs, z, labels, batch_stats):
    del labels
    out = jnp.einsum('nhwc,cd->nhwd', inputs, params['w'])
    out = out + (z @ params['v'])[:, None, None, :]
    return out, batch_stats + 1  # counts the calls, like BN statistics would change

  return generator_fn


def _setup(channels_in=3, n=4):
  x = jax.random.uniform(jax.random.PRNGKey(0), (n, 6, 6, 1))
  x = x.at[0].set(1.0)  # a saturated image: the [0, 1] clip matters
  y = jnp.arange(n) % 3
  z = jax.random.normal(jax.random.PRNGKey(1), (n, 8))
  params = {'w': jax.random.normal(jax.random.PRNGKey(2), (channels_in, 1)) * 3,
            'v': jax.random.normal(jax.random.PRNGKey(3), (8, 1))}
  return x, y, z, params


def test_every_step_stays_in_eps_ball_and_pixel_box():
  x, y, z, params = _setup()
  options = learned.UnrollOptions(eps=EPS, steps=6, step_size=0.2)
  x_advs, calls, _ = learned.recursive_attack(_toy_generator(params), _classifier(), x, y, z,
                                           jnp.zeros(()), options)
  assert x_advs.shape == (6,) + x.shape
  assert int(calls) == 6  # state threaded through every step
  assert float(jnp.max(jnp.abs(x_advs - x[None]))) <= EPS + 1e-6
  assert float(x_advs.min()) >= 0.0 and float(x_advs.max()) <= 1.0
  assert float(jnp.max(jnp.abs(x_advs[-1] - x))) > 0.1


def test_scan_equals_a_python_loop_with_z_held_fixed():
  x, y, z, params = _setup()
  options = learned.UnrollOptions(eps=EPS, steps=4, step_size=0.1)
  generator_fn, logits_fn = _toy_generator(params), _classifier()
  x_advs, _, _ = learned.recursive_attack(generator_fn, logits_fn, x, y, z, jnp.zeros(()),
                                       options)
  delta, stats = jnp.zeros_like(x), jnp.zeros(())
  for t in range(4):  # the same z at every step
    delta, x_adv, stats, _ = learned.attack_cell(generator_fn, logits_fn, x, y, z, delta, stats,
                                              options)
    np.testing.assert_allclose(x_advs[t], x_adv, atol=1e-6)
  other, _, _ = learned.recursive_attack(generator_fn, logits_fn, x, y, z + 1.0, jnp.zeros(()),
                                      options)
  assert not np.allclose(other, x_advs)  # z does reach the output


def test_rolled_and_unrolled_scan_agree():
  x, y, z, params = _setup()
  run = lambda unroll: learned.recursive_attack(
      _toy_generator(params), _classifier(), x, y, z, jnp.zeros(()),
      learned.UnrollOptions(eps=EPS, steps=3, step_size=0.1, unroll=unroll))[0]
  np.testing.assert_allclose(run(True), run(1), atol=1e-6)


def test_gradient_normalisation_is_per_sample_and_channel():
  grad = jax.random.normal(jax.random.PRNGKey(0), (3, 5, 5, 2))
  gn = learned.normalize_gradient(grad, 'channel')
  np.testing.assert_allclose(jnp.sqrt(jnp.sum(gn ** 2, axis=(1, 2))), 1.0, rtol=1e-5)
  gb = learned.normalize_gradient(grad, 'batch_max')
  assert float(jnp.max(jnp.abs(gb))) == pytest.approx(1.0)
  np.testing.assert_array_equal(learned.normalize_gradient(grad, 'none'), grad)
  assert np.all(np.isfinite(learned.normalize_gradient(jnp.zeros_like(grad), 'channel')))


def test_a_tiny_gradient_still_normalises_to_unit_norm_per_channel():
  """A confident classifier's batch-mean gradient can be 1e-10 per pixel: gn must still have
  unit norm per sample and channel (SPEC: 1e-15 inside the norm, not a floor on it)."""
  grad = 1e-10 * jax.random.normal(jax.random.PRNGKey(0), (3, 5, 5, 2))
  gn = learned.normalize_gradient(grad, 'channel')
  np.testing.assert_allclose(jnp.sqrt(jnp.sum(gn ** 2, axis=(1, 2))), 1.0, rtol=1e-4)
  assert float(learned.channel_norm_mean(gn)) == pytest.approx(1.0, rel=1e-4)
  mixed = grad.at[1].set(0.0)  # an exactly zero gradient stays zero, without NaN
  gn = learned.normalize_gradient(mixed, 'channel')
  assert np.all(np.isfinite(gn)) and float(jnp.max(jnp.abs(gn[1]))) == 0.0


def test_recursive_attack_reports_the_gn_norm_of_every_step():
  x, y, z, params = _setup()
  options = learned.UnrollOptions(eps=EPS, steps=3, step_size=0.1)
  _, _, gn_norms = learned.recursive_attack(_toy_generator(params), _classifier(), x, y, z,
                                            jnp.zeros(()), options)
  assert gn_norms.shape == (3,)
  np.testing.assert_allclose(gn_norms, 1.0, rtol=1e-4)
  assert learned.reach(options) == pytest.approx(0.3)


def test_diversity_loss_by_hand():
  x_adv = jnp.array([[[[0.0]], [[1.0]]], [[[0.5]], [[0.5]]],    # b = 0, 1
                     [[[1.0]], [[1.0]]], [[[0.5]], [[0.0]]]])   # b + B
  z = jnp.array([[0.0, 0.0], [1.0, 1.0], [2.0, 0.0], [1.0, 0.0]])
  # b=0: mean|x diff| = (1 + 0)/2 = 0.5, mean|z diff| = (2 + 0)/2 = 1 -> 0.5
  # b=1: mean|x diff| = (0 + 0.5)/2 = 0.25, mean|z diff| = (0 + 1)/2 = 0.5 -> 0.5
  x_adv = x_adv.reshape(4, 2, 1, 1)
  expected = np.mean([0.5 / (1.0 + 1e-8), 0.25 / (0.5 + 1e-8)])
  assert float(learned.diversity_loss(x_adv, z)) == pytest.approx(expected, rel=1e-6)


def test_one_step_without_delta_is_the_one_shot_generator():
  """T=1, no delta input, step eps: x_adv = clip(x + eps * tanh(G(x, gn)), 0, 1)."""
  x, y, z, params = _setup(channels_in=2)
  options = learned.UnrollOptions(eps=EPS, steps=1, step_size=EPS, use_delta=False,
                                  normalize_grad='batch_max')
  generator_fn, logits_fn = _toy_generator(params), _classifier()
  x_advs, _, _ = learned.recursive_attack(generator_fn, logits_fn, x, y, z, jnp.zeros(()), options)
  grad = jax.grad(lambda v: jnp.mean(learned.cross_entropy(logits_fn(v), y)))(x)
  gn = grad / (jnp.max(jnp.abs(grad)) + learned.GRAD_NORM_EPS)
  direction, _ = generator_fn(jnp.concatenate([x, gn], -1), z, y, jnp.zeros(()))
  np.testing.assert_allclose(x_advs[0], jnp.clip(x + EPS * jnp.tanh(direction), 0, 1),
                             atol=1e-6)


def _objective(params, x, y, z, options):
  x_advs, _, _ = learned.recursive_attack(_toy_generator(params), _classifier(), x, y, z,
                                       jnp.zeros(()), options)
  logits = _classifier()(x_advs.reshape(-1, *x.shape[1:]))
  return jnp.mean(learned.cross_entropy(logits, jnp.tile(y, options.steps)))


def _loop_objective(params, x, y, z, options, gradient_at_step):
  """The same objective as a Python loop whose step-t input gradient is given."""
  delta, x_advs = jnp.zeros_like(x), []
  for t in range(options.steps):
    x_adv = jnp.clip(x + delta, 0.0, 1.0)
    gn = learned.normalize_gradient(gradient_at_step(t, x_adv), options.normalize_grad)
    direction, _ = _toy_generator(params)(jnp.concatenate([x, gn, delta], -1), z, y, 0)
    delta = jnp.clip(delta + options.step_size * jnp.tanh(direction), -EPS, EPS)
    x_advs.append(jnp.clip(x + delta, 0.0, 1.0))
  logits = _classifier()(jnp.concatenate(x_advs))
  return jnp.mean(learned.cross_entropy(logits, jnp.tile(y, options.steps)))


def test_input_gradient_is_stop_gradiented():
  """The generator's gradient equals one computed with each step's input gradient frozen
  as a constant, and differs from one that differentiates through it."""
  x, y, z, params = _setup()
  options = learned.UnrollOptions(eps=EPS, steps=2, step_size=0.1)
  ours = jax.grad(_objective)(params, x, y, z, options)
  assert all(np.all(np.isfinite(g)) and np.any(g != 0) for g in jax.tree_util.tree_leaves(ours))

  # Reference: evaluate each step's input gradient at the current params, then freeze it.
  logits_fn = _classifier()
  _, x_adv1, _, _ = learned.attack_cell(_toy_generator(params), logits_fn, x, y, z,
                                     jnp.zeros_like(x), jnp.zeros(()), options)
  frozen = [learned.input_gradient(logits_fn, x, y),
            learned.input_gradient(logits_fn, x_adv1, y)]
  reference = jax.grad(_loop_objective)(params, x, y, z, options,
                                        lambda t, x_adv: frozen[t])
  for a, b in zip(jax.tree_util.tree_leaves(ours), jax.tree_util.tree_leaves(reference)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)

  live = lambda t, x_adv: jax.grad(
      lambda u: jnp.mean(learned.cross_entropy(logits_fn(u), y)))(x_adv)
  with_second_order = jax.grad(_loop_objective)(params, x, y, z, options, live)
  assert not np.allclose(with_second_order['w'], ours['w'], rtol=1e-4)


def test_random_start_is_uniform_in_the_eps_ball_and_the_attack_stays_in_it():
  x, y, z, params = _setup()
  options = learned.UnrollOptions(eps=EPS, steps=3, step_size=0.1, random_start=True)
  delta_0 = learned.initial_delta(x, options, jax.random.PRNGKey(5))
  assert float(jnp.max(jnp.abs(delta_0))) <= EPS
  assert float(jnp.mean(jnp.abs(delta_0))) == pytest.approx(EPS / 2, rel=0.15)  # U(-eps, eps)
  x_advs, _, _ = learned.recursive_attack(_toy_generator(params), _classifier(), x, y, z,
                                          jnp.zeros(()), options, key=jax.random.PRNGKey(5))
  assert float(jnp.max(jnp.abs(x_advs - x[None]))) <= EPS + 1e-6
  assert float(x_advs.min()) >= 0.0 and float(x_advs.max()) <= 1.0
  # The first step starts from x + delta_0, not from x: the result differs from delta_0 = 0.
  from_zero, _, _ = learned.recursive_attack(_toy_generator(params), _classifier(), x, y, z,
                                             jnp.zeros(()), options._replace(random_start=False))
  assert float(jnp.max(jnp.abs(x_advs[0] - from_zero[0]))) > 1e-3


def test_random_start_without_a_key_is_an_error():
  x, y, z, params = _setup()
  options = learned.UnrollOptions(eps=EPS, steps=2, step_size=0.2, random_start=True)
  with pytest.raises(ValueError, match='random_start needs a key'):
    learned.recursive_attack(_toy_generator(params), _classifier(), x, y, z, jnp.zeros(()),
                             options)
  assert not jnp.any(learned.initial_delta(x, options._replace(random_start=False), None))

