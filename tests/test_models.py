import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from l2lda_jax.models import LeNet5, ResNet20, create_classifier
from l2lda_jax.models.classifiers import Conv, max_pool_2x2


def _param_count(tree):
  return sum(x.size for x in jax.tree_util.tree_leaves(tree))


def test_lenet5_has_61706_parameters_and_outputs_logits():
  model = LeNet5()
  variables = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 28, 28, 1)))
  assert _param_count(variables['params']) == 61_706
  out = model.apply(variables, jnp.ones((3, 28, 28, 1)))
  assert out.shape == (3, 10)


def test_lenet5_starts_from_the_authors_weights_init_normal():
  """Conv weights N(0, 0.02), linear weights Xavier-uniform, biases zero (the authors'
  `weights_init_normal`, applied to a LeNet-5 trained from scratch)."""
  params = LeNet5().init(jax.random.PRNGKey(0), jnp.zeros((1, 28, 28, 1)))['params']
  for name in ('conv1', 'conv2', 'conv3'):
    kernel = np.asarray(params[name]['kernel'])
    sigma = 0.02 / np.sqrt(kernel.size)  # of the sample mean; the sample std's is ~0.7x
    assert abs(kernel.std() - 0.02) < 4 * sigma and abs(kernel.mean()) < 4 * sigma, name
    assert not np.any(params[name]['bias'])
  conv3 = np.asarray(params['conv3']['kernel'])
  assert np.abs(conv3).max() > 0.06  # a normal, not U(+-1/sqrt(400) = 0.05)
  for name, (fan_in, fan_out) in (('fc1', (120, 84)), ('fc2', (84, 10))):
    kernel = np.asarray(params[name]['kernel'])
    bound = np.sqrt(6 / (fan_in + fan_out))
    assert np.abs(kernel).max() <= bound and np.abs(kernel).max() > 0.9 * bound, name
    assert not np.any(params[name]['bias'])


def test_resnet20_parameter_count_and_shapes():
  model = ResNet20()
  variables = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)))
  # He et al.'s ResNet-20 with option-A shortcuts (0.27M): counted by hand, layer by layer.
  assert _param_count(variables['params']) == 269_722
  assert 'batch_stats' in variables
  out, updates = model.apply(variables, jnp.ones((2, 32, 32, 3)), train=True,
                             mutable=['batch_stats'])
  assert out.shape == (2, 10)
  before = jax.tree_util.tree_leaves(variables['batch_stats'])
  after = jax.tree_util.tree_leaves(updates['batch_stats'])
  assert any(not np.allclose(a, b) for a, b in zip(before, after))


def test_resnet20_normalises_inside_the_model():
  """A constant image at the dataset mean is all zeros after the model's normalisation."""
  model = ResNet20()
  variables = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)))
  mean_image = jnp.broadcast_to(jnp.asarray(model.mean), (1, 32, 32, 3))
  _, state = model.apply(variables, mean_image, capture_intermediates=True,
                         mutable=['intermediates'])
  stem = state['intermediates']['stem_conv']['__call__'][0]
  np.testing.assert_allclose(stem, 0.0, atol=1e-6)


def test_patch_conv_matches_flax_conv():
  x = jax.random.uniform(jax.random.PRNGKey(0), (2, 12, 12, 3))
  patch = Conv(5, 5, padding=2, cpu_form='patches', impl='cpu')
  params = patch.init(jax.random.PRNGKey(1), x)
  conv = nn.Conv(5, (5, 5), padding=2)
  np.testing.assert_allclose(patch.apply(params, x), conv.apply(params, x), atol=1e-5)


@pytest.mark.parametrize('channels,features,padding,width', [(1, 6, 2, 28), (6, 16, 0, 14),
                                                             (3, 4, 1, 9)])
def test_row_conv_matches_flax_conv_in_values_and_gradients(channels, features, padding,
                                                            width):
  x = jax.random.uniform(jax.random.PRNGKey(0), (2, width, width, channels))
  row = Conv(features, 5, padding=padding, cpu_form='rows', impl='cpu')
  params = row.init(jax.random.PRNGKey(1), x)
  conv = nn.Conv(features, (5, 5), padding=padding)
  np.testing.assert_allclose(row.apply(params, x), conv.apply(params, x), atol=1e-5)
  loss = lambda module: lambda p, x: jnp.sum(jnp.sin(module.apply(p, x)))
  row_grads = jax.grad(loss(row), (0, 1))(params, x)
  conv_grads = jax.grad(loss(conv), (0, 1))(params, x)
  for a, b in zip(jax.tree.leaves(row_grads), jax.tree.leaves(conv_grads)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-4)


def test_max_pool_matches_flax_max_pool():
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 10, 10, 4))
  np.testing.assert_array_equal(max_pool_2x2(x), nn.max_pool(x, (2, 2), (2, 2)))
  odd = jax.random.normal(jax.random.PRNGKey(1), (2, 9, 7, 3))
  np.testing.assert_array_equal(max_pool_2x2(odd), nn.max_pool(odd, (2, 2), (2, 2)))


def test_max_pool_gradient_is_pytorchs():
  """Without ties: XLA's gradient of nn.max_pool. With ties: all to the first maximum in
  row-major order, as PyTorch's max_pool2d (blank MNIST background ties after conv1)."""
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 9, 7, 3))
  g = jax.random.normal(jax.random.PRNGKey(1), (2, 4, 3, 3))
  grad = lambda pool, v: jax.grad(lambda u: jnp.sum(pool(u) * g))(v)
  flax_pool = lambda u: nn.max_pool(u, (2, 2), (2, 2))
  np.testing.assert_array_equal(grad(max_pool_2x2, x), grad(flax_pool, x))

  ties = jnp.zeros((1, 4, 4, 1)).at[0, 2:, 2:, 0].set([[1.0, 3.0], [3.0, 3.0]])
  upstream = jnp.array([[5.0, 6.0], [7.0, 8.0]]).reshape(1, 2, 2, 1)
  got = jax.grad(lambda u: jnp.sum(max_pool_2x2(u) * upstream))(ties)[0, :, :, 0]
  np.testing.assert_array_equal(got, [[5.0, 0.0, 6.0, 0.0],
                                      [0.0, 0.0, 0.0, 0.0],
                                      [7.0, 0.0, 0.0, 8.0],
                                      [0.0, 0.0, 0.0, 0.0]])


def test_unknown_model_is_named():
  with pytest.raises(ValueError, match='vgg'):
    create_classifier('vgg')


def test_surrogate_relu_keeps_the_forward_and_smooths_the_backward():
  from l2lda_jax.models.surrogate import surrogate_relu
  x = jnp.array([-3.0, -0.5, 0.0, 0.5, 3.0])
  relu = surrogate_relu(0.5)
  np.testing.assert_array_equal(relu(x), jax.nn.relu(x))
  grad = jax.grad(lambda v: jnp.sum(relu(v)))(x)
  np.testing.assert_allclose(grad, jax.nn.sigmoid(x / 0.5), rtol=1e-6)
  assert surrogate_relu(0.0) is jax.nn.relu
  with pytest.raises(ValueError, match='temperature'):
    surrogate_relu(-1.0)


def test_lenet5_with_surrogate_relu_has_the_same_logits_and_no_dead_input_gradient():
  """A dead first layer (negative biases) zeroes the true input gradient; the surrogate's
  is zero only where max pooling routes nothing (ties on the blank background), and the
  logits stay bit-identical."""
  from l2lda_jax.models.surrogate import surrogate_relu
  variables = LeNet5().init(jax.random.PRNGKey(0), jnp.zeros((1, 28, 28, 1)))
  params = jax.tree_util.tree_map(lambda p: p, variables['params'])
  params['conv1']['bias'] = -jnp.ones_like(params['conv1']['bias'])  # every unit off at x = 0
  variables = {'params': params}
  x = jnp.zeros((2, 28, 28, 1)).at[:, 10:18, 10:18].set(1.0)
  y = jnp.array([3, 7])
  plain, smooth = LeNet5(), LeNet5(activation=surrogate_relu(0.1))
  np.testing.assert_array_equal(plain.apply(variables, x), smooth.apply(variables, x))

  def input_gradient(model):
    loss = lambda v: jnp.sum(-jax.nn.log_softmax(model.apply(variables, v))[jnp.arange(2), y])
    return jax.grad(loss)(x)

  dead_plain = np.mean(np.asarray(input_gradient(plain)) == 0)
  dead_smooth = np.mean(np.asarray(input_gradient(smooth)) == 0)
  assert dead_plain > 0.3 and dead_smooth < dead_plain / 3
