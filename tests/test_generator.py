"""The U-Net generator of SPEC section 2."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from l2lda_jax.models.generator import ConditionalBatchNorm, Generator, conv_transpose_k4s2p1


# Each test jits its whole computation: one XLA compilation instead of one per operation
# (op-by-op dispatch compiles every primitive of every shape, seconds on a busy 2-core CPU).
def _init(generator, n=4, hw=28, c=1, seed=0):
  inputs = jax.random.normal(jax.random.PRNGKey(seed), (n, hw, hw, 3 * c))
  z = jax.random.normal(jax.random.PRNGKey(seed + 1), (n, generator.z_dim))
  labels = jnp.arange(n) % 10
  variables = jax.jit(generator.init)(jax.random.PRNGKey(seed + 2), inputs, z, labels)
  return variables, inputs, z, labels


@pytest.mark.parametrize('hw,c', [(28, 1), (32, 3)])
def test_output_has_image_shape(hw, c):
  """Shapes only: eval_shape traces init and apply without compiling them."""
  generator = Generator(out_channels=c, width=8)
  inputs = jax.ShapeDtypeStruct((4, hw, hw, 3 * c), jnp.float32)
  z = jax.ShapeDtypeStruct((4, generator.z_dim), jnp.float32)
  labels = jax.ShapeDtypeStruct((4,), jnp.int32)
  variables = jax.eval_shape(generator.init, jax.random.PRNGKey(0), inputs, z, labels)
  out, _ = jax.eval_shape(lambda v, *a: generator.apply(v, *a, train=True,
                                                        mutable=['batch_stats']),
                          variables, inputs, z, labels)
  assert out.shape == (4, hw, hw, c)


def test_paper_width_layer_shapes_and_inits():
  generator = Generator(out_channels=1)
  variables, *_ = _init(generator)
  p = variables['params']
  # Input channels: 3C image channels + 8 tiled z features into every encoder conv.
  assert p['down0']['kernel'].shape == (3, 3, 3 + 8, 64)
  assert p['down1']['kernel'].shape == (4, 4, 64 + 8, 64)
  assert p['down2']['kernel'].shape == (4, 4, 64 + 8, 128)
  assert p['up2']['kernel'].shape == (4, 4, 128, 64)
  assert p['up1']['kernel'].shape == (4, 4, 128, 64)
  assert p['final']['kernel'].shape == (3, 3, 128, 1)
  assert all('bias' not in p[name] for name in ('down0', 'down1', 'down2', 'up2', 'up1', 'final'))
  assert np.std(p['down2']['kernel']) == pytest.approx(0.02, rel=0.05)
  assert np.mean(p['up1_bn']['gamma_shared']) == pytest.approx(1.0, abs=0.01)
  assert p['up1_bn']['gamma_class'].shape == (10, 64)
  np.testing.assert_array_equal(p['up1_bn']['beta_class'], 0.0)


def test_label_enters_only_through_conditional_batch_norm():
  generator = Generator(out_channels=1, width=8)
  variables, inputs, z, _ = _init(generator)
  run = jax.jit(lambda v, labels: generator.apply(v, inputs, z, labels, train=True,
                                                  mutable=['batch_stats'])[0])
  ones, sevens = jnp.ones(4, jnp.int32), jnp.full(4, 7, jnp.int32)
  assert not np.allclose(run(variables, ones), run(variables, sevens))
  # With the per-class tables zeroed, the label has no path left to the output.
  zero_tables = jax.tree_util.tree_map_with_path(
      lambda path, v: jnp.zeros_like(v) if 'class' in jax.tree_util.keystr(path) else v,
      variables)
  np.testing.assert_array_equal(run(zero_tables, ones), run(zero_tables, sevens))


def test_plain_batch_norm_ablation_ignores_the_label():
  generator = Generator(out_channels=1, width=8, num_classes=0)
  variables, inputs, z, _ = _init(generator)
  assert 'gamma_class' not in variables['params']['up1_bn']
  run = jax.jit(lambda labels: generator.apply(variables, inputs, z, labels, train=True,
                                               mutable=['batch_stats'])[0])
  np.testing.assert_array_equal(run(jnp.zeros(4, jnp.int32)), run(jnp.ones(4, jnp.int32)))


def test_conditional_bn_formula():
  """BN without affine, then (g_shared + g[y]) * x_hat + (b_shared + b[y])."""
  x = jax.random.normal(jax.random.PRNGKey(0), (6, 2, 2, 3)) * 3 + 1
  labels = jnp.array([0, 1, 2, 0, 1, 2])
  cbn = ConditionalBatchNorm(num_classes=3)
  variables = jax.jit(lambda *a: cbn.init(*a, train=True))(jax.random.PRNGKey(1), x, labels)
  p = variables['params']
  p = dict(p, beta_class=jax.random.normal(jax.random.PRNGKey(2), (3, 3)))
  out, _ = jax.jit(lambda v, *a: cbn.apply(v, *a, train=True, mutable=['batch_stats']))(
      {'params': p, 'batch_stats': variables['batch_stats']}, x, labels)
  mean, var = jnp.mean(x, (0, 1, 2)), jnp.var(x, (0, 1, 2))
  x_hat = (x - mean) / jnp.sqrt(var + 1e-10)
  gamma = p['gamma_shared'] + p['gamma_class'][labels]
  beta = p['beta_shared'] + p['beta_class'][labels]
  np.testing.assert_allclose(out, x_hat * gamma[:, None, None] + beta[:, None, None],
                             atol=1e-5)


def _torch_conv_transpose(x, kernel, stride, padding):
  """PyTorch ConvTranspose2d by its definition: out[i*s - p + k] += x[i] * w[k]."""
  n, h, w, cin = x.shape
  k, cout = kernel.shape[0], kernel.shape[-1]
  full = np.zeros((n, (h - 1) * stride + k, (w - 1) * stride + k, cout))
  for i in range(h):
    for j in range(w):
      full[:, i * stride:i * stride + k, j * stride:j * stride + k] += np.einsum(
          'nc,abcd->nabd', x[:, i, j], kernel)
  return full[:, padding:full.shape[1] - padding, padding:full.shape[2] - padding]


def test_transposed_conv_has_pytorch_k4_s2_p1_semantics():
  x = np.asarray(jax.random.normal(jax.random.PRNGKey(0), (2, 5, 5, 3)))
  torch_kernel = np.asarray(jax.random.normal(jax.random.PRNGKey(1), (4, 4, 3, 2)))
  deconv = conv_transpose_k4s2p1(2)
  # Flax convolves the dilated input without flipping the kernel: flip to compare.
  ours = deconv.apply({'params': {'kernel': torch_kernel[::-1, ::-1]}}, x)
  expected = _torch_conv_transpose(x, torch_kernel, 2, 1)
  assert ours.shape == expected.shape == (2, 10, 10, 2)
  np.testing.assert_allclose(ours, expected, atol=1e-4)


@pytest.mark.parametrize('size', [28, 32])
def test_tap_convolutions_equal_the_flax_layers_they_replace(size):
  """DownConv, UpConv and Conv3x3 compute exactly nn.Conv / ConvTranspose with the same params."""
  from l2lda_jax.models.generator import Conv3x3, DownConv, UpConv
  x = jax.random.normal(jax.random.PRNGKey(0), (2, size, size, 5))
  small = jax.random.normal(jax.random.PRNGKey(1), (2, size // 2, size // 2, 5))
  kernel4 = jax.random.normal(jax.random.PRNGKey(2), (4, 4, 5, 3))
  kernel3 = jax.random.normal(jax.random.PRNGKey(3), (3, 3, 5, 3))
  pairs = [
      (DownConv(3, 'cpu'), nn.Conv(3, (4, 4), (2, 2), padding=((1, 1), (1, 1)),
                                   use_bias=False), kernel4, x),
      (UpConv(3, 'cpu'), conv_transpose_k4s2p1(3), kernel4, small),
      (Conv3x3(3, 'cpu'), nn.Conv(3, (3, 3), padding=((1, 1), (1, 1)), use_bias=False),
       kernel3, x),
  ]
  for ours, reference, kernel, inputs in pairs:
    run = lambda module, k, v: module.apply({'params': {'kernel': k}}, v)
    grad = lambda module, k, v: jax.grad(lambda k, v: jnp.sum(jnp.sin(run(module, k, v))),
                                         argnums=(0, 1))(k, v)
    # One compiled program per pair: both layers' outputs and gradients.
    (out, grads), (expected, expected_grads) = jax.jit(lambda k, v: tuple(
        (run(module, k, v), grad(module, k, v)) for module in (ours, reference)))(
            kernel, inputs)
    np.testing.assert_allclose(out, expected, atol=1e-4, rtol=1e-5)
    for got, want in zip(grads, expected_grads):
      np.testing.assert_allclose(got, want, atol=1e-3, rtol=1e-4)


@pytest.mark.parametrize('form', ['im2col', 'wide'])
@pytest.mark.parametrize('kh,kw', [(3, 3), (2, 2)])
def test_every_tap_form_is_a_valid_convolution(form, kh, kw):
  """Each matmul organisation of conv_taps equals XLA's VALID convolution, with gradients."""
  from l2lda_jax.models.convolution import conv_taps
  x = jax.random.normal(jax.random.PRNGKey(0), (3, 7, 6, 5))
  kernel = jax.random.normal(jax.random.PRNGKey(1), (kh, kw, 5, 4))
  reference = lambda v, k: jax.lax.conv_general_dilated(
      v, k, (1, 1), 'VALID', dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
  ours = lambda v, k: conv_taps(v, k, form)
  grad = lambda conv, v, k: jax.grad(lambda v, k: jnp.sum(jnp.sin(conv(v, k))),
                                     argnums=(0, 1))(v, k)
  # One compiled program: both convolutions' values and gradients.
  (out, grads), (expected, expected_grads) = jax.jit(lambda v, k: tuple(
      (conv(v, k), grad(conv, v, k)) for conv in (ours, reference)))(x, kernel)
  np.testing.assert_allclose(out, expected, atol=1e-4, rtol=1e-5)
  for got, want in zip(grads, expected_grads):
    np.testing.assert_allclose(got, want, atol=1e-3, rtol=1e-4)


def test_conv_form_picks_the_least_data_movement():
  from l2lda_jax.models.convolution import taps_form as conv_form
  # Paper width: down0 convolves 3 input channels (z is `tiled_conv`), `final` has one output.
  assert conv_form(3, 64, 9) == 'im2col'
  assert conv_form(128, 1, 9) == 'wide'
  assert conv_form(4 * 64, 64, 4) == 'wide'  # down1 after space-to-depth
  assert conv_form(128, 4 * 64, 4) == 'im2col'  # up1's four phases
  # At width 8: down0 im2col, `final` and the down-convs wide, the up-convs im2col.
  assert conv_form(3, 8, 9) == 'im2col'
  assert conv_form(16, 1, 9) == 'wide'
  assert conv_form(4 * 8, 8, 4) == 'wide'
  assert conv_form(16, 4 * 8, 4) == 'im2col'


@pytest.mark.parametrize('size', [28, 32])
def test_encoder_convs_with_tiled_features_equal_convs_over_the_concatenation(size):
  """Conv3x3 / DownConv(x, z) = nn.Conv over concat[x, tile(z)], values and all gradients."""
  from l2lda_jax.models.generator import Conv3x3, DownConv
  x = jax.random.normal(jax.random.PRNGKey(0), (2, size, size, 5))
  z = jax.random.normal(jax.random.PRNGKey(1), (2, 4))
  pairs = [
      (Conv3x3(3, 'cpu'), nn.Conv(3, (3, 3), padding=((1, 1), (1, 1)), use_bias=False), 3),
      (DownConv(3, 'cpu'), nn.Conv(3, (4, 4), (2, 2), padding=((1, 1), (1, 1)),
                                   use_bias=False), 4),
  ]
  tile = lambda v: jnp.broadcast_to(v[:, None, None, :], (2, size, size, 4))
  for ours, reference, k in pairs:
    kernel = jax.random.normal(jax.random.PRNGKey(k), (k, k, 5 + 4, 3))
    run_ours = lambda kern, v, u: ours.apply({'params': {'kernel': kern}}, v, u)
    run_reference = lambda kern, v, u: reference.apply(
        {'params': {'kernel': kern}}, jnp.concatenate([v, tile(u)], axis=-1))
    grad = lambda run, *a: jax.grad(lambda *a: jnp.sum(jnp.sin(run(*a))),
                                    argnums=(0, 1, 2))(*a)
    # One compiled program per pair: both layers' values and gradients.
    (out, grads), (expected, expected_grads) = jax.jit(lambda *a: tuple(
        (run(*a), grad(run, *a)) for run in (run_ours, run_reference)))(kernel, x, z)
    np.testing.assert_allclose(out, expected, atol=1e-4, rtol=1e-5)
    for got, want in zip(grads, expected_grads):
      np.testing.assert_allclose(got, want, atol=1e-3, rtol=1e-4)


class _ConcatenatingGenerator(nn.Module):
  """SPEC section 2 written plainly: z tiled and concatenated, Flax's own convolutions."""
  num_classes: int = 10
  width: int = 8
  z_dim: int = 8

  @nn.compact
  def __call__(self, inputs, z, labels, train: bool = True):
    w = self.width
    cbn = lambda name: ConditionalBatchNorm(self.num_classes, name=name)
    leaky = lambda v: nn.leaky_relu(v, 0.2)
    dense = lambda name: nn.Dense(self.z_dim, name=name)
    zf = nn.relu(dense('z_fc2')(nn.relu(dense('z_fc1')(z))))
    with_z = lambda v: jnp.concatenate(
        [v, jnp.broadcast_to(zf[:, None, None, :], v.shape[:3] + (self.z_dim,))], axis=-1)
    conv3 = lambda f, name: nn.Conv(f, (3, 3), padding=((1, 1), (1, 1)), use_bias=False,
                                    name=name)
    down = lambda f, name: nn.Conv(f, (4, 4), (2, 2), padding=((1, 1), (1, 1)),
                                   use_bias=False, name=name)
    d0 = leaky(conv3(w, 'down0')(with_z(inputs)))
    d1 = leaky(cbn('down1_bn')(down(w, 'down1')(with_z(d0)), labels, train))
    d2 = leaky(down(2 * w, 'down2')(with_z(d1)))
    u2 = nn.relu(cbn('up2_bn')(conv_transpose_k4s2p1(w, 'up2')(d2), labels, train))
    u1 = nn.relu(cbn('up1_bn')(conv_transpose_k4s2p1(w, 'up1')(
        jnp.concatenate([u2, d1], axis=-1)), labels, train))
    return conv3(1, 'final')(jnp.concatenate([u1, d0], axis=-1))


def test_generator_equals_the_plain_concatenating_network():
  """Same parameters, same outputs, BN statistics and gradients as the unoptimised network."""
  generator = Generator(out_channels=1, width=8)
  variables, inputs, z, labels = _init(generator, n=6)
  reference = _ConcatenatingGenerator()

  def loss(module, params, inputs, z):
    out, updates = module.apply({'params': params, 'batch_stats': variables['batch_stats']},
                                inputs, z, labels, train=True, mutable=['batch_stats'])
    return jnp.sum(jnp.sin(3.0 * out)), (out, updates)

  results = [jax.jit(jax.grad(lambda *a, m=module: loss(m, *a), argnums=(0, 1, 2),
                              has_aux=True))(variables['params'], inputs, z)
             for module in (generator, reference)]
  (grads, (out, stats)), (ref_grads, (ref_out, ref_stats)) = results
  np.testing.assert_allclose(out, ref_out, atol=1e-5, rtol=1e-4)
  for got, want in zip(jax.tree_util.tree_leaves(stats), jax.tree_util.tree_leaves(ref_stats)):
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-4)
  assert jax.tree_util.tree_structure(grads) == jax.tree_util.tree_structure(ref_grads)
  for got, want in zip(jax.tree_util.tree_leaves(grads), jax.tree_util.tree_leaves(ref_grads)):
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-3)
