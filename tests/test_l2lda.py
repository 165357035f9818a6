"""The L2L-DA game step (Algorithm 1) and the generator-method settings."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import cifar10, mnist
from l2lda_jax import l2lda, train
from l2lda_jax.models import create_classifier
from l2lda_jax.models.generator import z_live_units


def _leaves_changed(before, after):
  return [not np.array_equal(a, b) for a, b in zip(jax.tree_util.tree_leaves(before),
                                                jax.tree_util.tree_leaves(after))]


def _game_config(method: str = 'l2lda'):
  """configs/mnist.py:smoke for `method`, with XLA's own convolutions: its game step
  compiles in under half the time of the CPU forms' (whose equal values and gradients
  test_convolution checks), and nothing checked here depends on the form. Only for
  programs run once: under the suite's -O0 (conftest) XLA's convolutions run slowly."""
  config = mnist.get_config('smoke')
  config.method = method
  config.conv_impl = 'native'
  return config


def _one_game_step(config, image_shape, batch=4):
  model = create_classifier(config.model, conv_impl=config.conv_impl)
  tx = train.make_optimizer(config.train)
  state = train.create_train_state(config, model, tx, image_shape, 10)
  _, game = train.make_train_steps(config, model, tx, 10, image_shape[-1])
  images = jax.random.randint(jax.random.PRNGKey(0), (batch,) + image_shape, 0, 256,
                              jnp.int32).astype(jnp.uint8)
  labels = jnp.arange(batch) % 10
  before = jax.tree_util.tree_map(np.asarray, state)
  after, metrics = game(state, images, labels)
  return before, after, metrics


@pytest.fixture(scope='module')
def mnist_game_step():
  """(config, (before, after, metrics)): one L2L-DA game step (k = 1) of configs/mnist.py:smoke,
  shared by the tests that read it (each game step compiles for seconds)."""
  config = _game_config()
  return config, _one_game_step(config, (28, 28, 1))


def test_one_compiled_step_updates_both_networks_and_their_bn_statistics():
  config = cifar10.get_config('smoke')  # ResNet-20 has BN, unlike LeNet-5
  config.method = 'l2lda'
  before, after, metrics = _one_game_step(config, (32, 32, 3))
  assert int(after.step) == 1
  assert all(_leaves_changed(before.params, after.params))
  assert all(_leaves_changed(before.batch_stats, after.batch_stats))
  assert all(_leaves_changed(before.generator.params, after.generator.params))
  assert all(_leaves_changed(before.generator.batch_stats, after.generator.batch_stats))
  for name in ('loss', 'generator_objective', 'generator_grad_norm', 'diversity_last'):
    assert np.isfinite(metrics[name]), name
  assert float(metrics['generator_grad_norm']) > 0


def test_k_generator_updates_per_classifier_update(mnist_game_step):
  """updates_per_step=2: the first ascent is the k=1 step, the second moves the generator
  further, and the classifier trains on the once-updated generator's attack."""
  _, (_, one, _) = mnist_game_step
  config = _game_config()
  assert config.generator.updates_per_step == 1  # the shared step is the k=1 step
  config.generator.updates_per_step = 2
  _, two, metrics = _one_game_step(config, (28, 28, 1))
  assert int(two.step) == 1 and np.isfinite(metrics['generator_objective'])
  assert all(_leaves_changed(one.generator.params, two.generator.params))
  assert any(_leaves_changed(one.params, two.params))


def test_l2l_star_is_one_shot_without_z_label_or_delta():
  config = _game_config('l2l')
  settings = l2lda.game_settings(config, 10)
  assert settings.options.steps == 1 and not settings.options.use_delta
  assert settings.options.step_size == pytest.approx(config.eps)
  assert settings.options.normalize_grad == 'batch_max'
  assert settings.z_dim == 0 and settings.num_classes == 0 and settings.draws == 1
  before, after, metrics = _one_game_step(config, (28, 28, 1))
  assert all(_leaves_changed(before.generator.params, after.generator.params))
  assert 'diversity_last' not in metrics


@pytest.mark.parametrize('override,check', [
    ({'steps': 1}, lambda s: s.options.steps == 1),
    ({'diversity_weight': 0.0}, lambda s: s.diversity_weight == 0.0),
    ({'use_delta': False}, lambda s: not s.options.use_delta),
    ({'use_label': False}, lambda s: s.num_classes == 0),
    ({'normalize_grad': 'none'}, lambda s: s.options.normalize_grad == 'none'),
])
def test_table1_ablation_switches(override, check):
  config = mnist.get_config('smoke')
  config.generator.update(override)
  settings = l2lda.game_settings(config, 10)
  assert check(settings)
  generator = l2lda.make_generator(settings, 1)
  # Shapes only: eval_shape traces the initialisation without compiling it.
  state = jax.eval_shape(lambda: l2lda.init_generator_state(
      generator, l2lda.make_generator_optimizer(config), settings, (28, 28, 1), 0))
  channels = state.params['down0']['kernel'].shape[2]
  assert channels == (3 if settings.options.use_delta else 2) + settings.z_dim


def test_generator_objective_sums_ce_and_weighted_diversity():
  config = mnist.get_config('smoke')
  config.generator.diversity_weight = 0.5
  settings = l2lda.game_settings(config, 10)
  generator = l2lda.make_generator(settings, 1)
  # Everything jitted: one compilation each instead of one per operation.
  gen = jax.jit(lambda: l2lda.init_generator_state(
      generator, l2lda.make_generator_optimizer(config), settings, (28, 28, 1), 0))()
  model = create_classifier('lenet5')
  variables = jax.jit(model.init)(jax.random.PRNGKey(0), jnp.zeros((1, 28, 28, 1)))
  logits_fn = lambda v: model.apply(variables, v)
  x = jax.random.uniform(jax.random.PRNGKey(1), (4, 28, 28, 1))
  x, y = jnp.concatenate([x, x]), jnp.tile(jnp.arange(4), 2)
  z = l2lda.draw_latents(jax.random.PRNGKey(2), 4, settings)
  objective = jax.jit(lambda params, batch_stats, x, y, z: l2lda.generator_objective(
      params, batch_stats, generator=generator, logits_fn=logits_fn, x=x, labels=y, z=z,
      settings=settings))
  value, (x_adv, _, trace) = objective(gen.params, gen.batch_stats, x, y, z)
  ce, div = trace.ce, trace.diversity
  assert ce.shape == div.shape == trace.gn_norm.shape == (settings.options.steps,)
  np.testing.assert_allclose(trace.gn_norm, 1.0, rtol=1e-4)  # normalised per channel
  assert float(value) == pytest.approx(float(jnp.sum(ce) + 0.5 * jnp.sum(div)), rel=1e-6)
  assert float(jnp.max(jnp.abs(x_adv - x))) <= config.eps + 1e-6
  assert float(x_adv.min()) >= 0.0 and float(x_adv.max()) <= 1.0
  assert float(jnp.min(div)) > 0  # two draws of z give two different attacks


def test_z_live_units_counts_the_z_mlp_units_any_draw_activates():
  """Known answers: an identity MLP passes exactly the positive coordinates of z; a very
  negative last bias kills every unit, the state train.py warns about."""
  eye = jnp.eye(3)
  params = {'z_fc1': {'kernel': eye, 'bias': jnp.zeros(3)},
            'z_fc2': {'kernel': eye, 'bias': jnp.zeros(3)}}
  z = jnp.array([[1.0, -1.0, -2.0], [0.5, -0.1, 3.0]])  # unit 1 is never positive
  assert int(z_live_units(params, z)) == 2
  params['z_fc2']['bias'] = jnp.full(3, -10.0)
  assert int(z_live_units(params, z)) == 0


def test_the_game_step_reports_live_z_units_of_the_updated_generator(mnist_game_step):
  config, (_, after, metrics) = mnist_game_step
  z = jax.random.normal(jax.random.PRNGKey(1), (4096, config.generator.z_dim))
  assert int(metrics['z_live_units']) <= config.generator.z_dim
  # A fresh generator's z MLP is alive; the batch's 8 draws see most of the 4,096's units.
  assert 0 < int(metrics['z_live_units']) <= int(z_live_units(after.generator.params, z))


def test_the_learned_attack_returns_the_first_draw_that_breaks_each_example():
  from l2lda_jax.attacks.l2lda_attack import first_breaking_draw
  x_advs = jnp.arange(3 * 4, dtype=jnp.float32).reshape(3, 4, 1, 1, 1)  # draw k, example n
  correct = jnp.array([[True, False, True, True],
                       [False, False, True, True],
                       [True, True, False, True]])
  chosen = first_breaking_draw(x_advs, correct)[:, 0, 0, 0]
  # example 0: draw 1; example 1: draw 0; example 2: draw 2; example 3: none breaks it -> 0
  np.testing.assert_array_equal(chosen, [x_advs[1, 0, 0, 0, 0], x_advs[0, 1, 0, 0, 0],
                                         x_advs[2, 2, 0, 0, 0], x_advs[0, 3, 0, 0, 0]])


def test_first_breaking_attack_keeps_per_example_the_first_attack_that_breaks_it():
  """Restarts of the learned attack: attack 0 breaks example 0, attack 1 example 1 (and
  0), none example 2; one attack alone is returned as it is."""
  from l2lda_jax.attacks.l2lda_attack import first_breaking_attack
  logits_fn = lambda v: v.reshape(v.shape[0], -1)[:, :2]  # class = the larger of 2 pixels
  x = jnp.array([[1., 0], [1., 0], [1., 0]]).reshape(3, 1, 2, 1)  # all class 0
  y = jnp.zeros(3, jnp.int32)
  keys = []

  def shift(pixels, tag):
    def attack(logits_fn, x, y, key):
      keys.append(key)
      return x.at[:, 0, :, 0].set(jnp.array(pixels)) + tag  # tag: which attack it was
    return attack

  attack0 = shift([[0., 2], [1., 0], [1., 0]], 0.0)
  attack1 = shift([[0., 3], [0., 3], [1., 0]], 0.5)
  key = jax.random.PRNGKey(7)
  assert first_breaking_attack([attack0]) is attack0
  x_adv = first_breaking_attack([attack0, attack1])(logits_fn, x, y, key)
  np.testing.assert_array_equal(x_adv[:, 0, :, 0], [[0., 2], [0.5, 3.5], [1.5, 0.5]])
  np.testing.assert_array_equal(keys[0], key)  # attack 0 runs as it would alone
  np.testing.assert_array_equal(keys[1], jax.random.fold_in(key, 1))


def test_worst_draw_picks_each_images_highest_loss_draw():
  """Draw-major [x_adv(z1); x_adv(z2)]: per image the draw with the higher CE is kept."""
  logits_fn = lambda v: v.reshape(v.shape[0], -1)  # logits = the image's 4 pixels
  labels = jnp.array([0, 1, 0, 1])  # two images, two draws
  x_adv = jnp.array([[5., 0, 0, 0], [0, 0, 3, 0],    # draw 1: image 0 right, image 1 wrong
                     [0, 0, 0, 2], [0, 4, 0, 0]]).reshape(4, 2, 2, 1)  # draw 2: the reverse
  chosen, chosen_labels = l2lda.worst_draw(logits_fn, x_adv, labels, draws=2)
  np.testing.assert_array_equal(chosen, x_adv[jnp.array([2, 1])])
  np.testing.assert_array_equal(chosen_labels, labels[:2])


def test_worst_draw_changes_only_what_the_classifier_trains_on(mnist_game_step):
  """classifier_sees = 'worst_draw': the same generator update as 'all_draws' (the
  generator's objective is untouched), a different classifier update."""
  config, (_, all_draws, _) = mnist_game_step
  assert config.generator.classifier_sees == 'all_draws'  # the shared step is the default
  config = _game_config()
  config.generator.classifier_sees = 'worst_draw'
  _, worst, metrics = _one_game_step(config, (28, 28, 1))
  # Two programs, fused differently: equal means equal to float rounding (measured 2e-7 of
  # a leaf's largest value), different means far beyond it (the classifier: 0.26).
  for same, other in zip(jax.tree_util.tree_leaves(all_draws.generator.params),
                         jax.tree_util.tree_leaves(worst.generator.params)):
    np.testing.assert_allclose(other, same, rtol=1e-5, atol=1e-6)
  classifier_change = max(
      float(np.max(np.abs(a - b)) / np.max(np.abs(a)))
      for a, b in zip(jax.tree_util.tree_leaves(all_draws.params),
                      jax.tree_util.tree_leaves(worst.params)))
  assert classifier_change > 1e-2
  assert np.isfinite(metrics['loss'])
