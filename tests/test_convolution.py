"""l2lda_jax.models.convolution: every CPU form equals XLA's convolution, in values and in
gradients with respect to input and kernel, at the models' real shapes; the models give the
same outputs with either implementation and the same parameters."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from l2lda_jax.models import convolution
from l2lda_jax.models.classifiers import LeNet5
from l2lda_jax.models.generator import Generator

# (name, input shape NHWC, kernel HWIO, stride, padding, CPU forms) of every convolution in
# LeNet-5 (SPEC section 3) and the paper-width generator on MNIST (SPEC section 2).
CONV_SHAPES = [
    ('lenet conv1', (2, 28, 28, 1), (5, 5, 1, 6), 1, 2, ('rows', 'patches', 'taps')),
    ('lenet conv2', (2, 14, 14, 6), (5, 5, 6, 16), 1, 0, ('rows', 'patches', 'taps')),
    ('lenet conv3', (2, 5, 5, 16), (5, 5, 16, 120), 1, 0, ('rows', 'patches', 'taps')),
    ('generator down0', (2, 28, 28, 3), (3, 3, 3, 64), 1, 1, ('taps',)),
    ('generator down1', (2, 28, 28, 64), (4, 4, 64, 64), 2, 1, ('taps',)),
    ('generator down2', (2, 14, 14, 64), (4, 4, 64, 128), 2, 1, ('taps',)),
    ('generator final', (2, 28, 28, 128), (3, 3, 128, 1), 1, 1, ('taps',)),
]
TRANSPOSE_SHAPES = [('generator up2', (2, 7, 7, 128), (4, 4, 128, 64)),
                    ('generator up1', (2, 14, 14, 128), (4, 4, 128, 64))]


def _inputs(x_shape, k_shape, seed=0):
  kx, kk, kc = jax.random.split(jax.random.PRNGKey(seed), 3)
  return (jax.random.normal(kx, x_shape), 0.1 * jax.random.normal(kk, k_shape), kc)


def _value_and_grads(conv, x, kernel, cotangent_key):
  """The output and the VJP of a random cotangent w.r.t. (input, kernel)."""
  out, vjp = jax.vjp(conv, x, kernel)
  return out, vjp(jax.random.normal(cotangent_key, out.shape))


def _all_value_and_grads(convs, x, kernel, cotangent_key):
  """_value_and_grads of each conv, all in one compiled program (one XLA compilation
  instead of one per operation and shape: most of this file's time on a 2-core CPU)."""
  return jax.jit(lambda v, k, key: [_value_and_grads(conv, v, k, key) for conv in convs])(
      x, kernel, cotangent_key)


def _assert_close(got, want):
  scale = float(jnp.max(jnp.abs(want))) or 1.0
  np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-5 * scale, rtol=1e-4)


@pytest.mark.parametrize('name,x_shape,k_shape,stride,padding,forms', CONV_SHAPES,
                         ids=[c[0] for c in CONV_SHAPES])
def test_every_cpu_form_equals_xlas_convolution_with_gradients(name, x_shape, k_shape, stride,
                                                               padding, forms):
  x, kernel, key = _inputs(x_shape, k_shape)
  native = lambda v, k: convolution.conv2d(v, k, stride=stride, padding=padding, impl='native')
  cpus = [lambda v, k, form=form: convolution.conv2d(v, k, stride=stride, padding=padding,
                                                     impl='cpu', cpu_form=form)
          for form in forms]
  (want, want_grads), *results = _all_value_and_grads([native, *cpus], x, kernel, key)
  for form, (got, got_grads) in zip(forms, results):
    assert got.shape == want.shape, (name, form)
    _assert_close(got, want)
    for g, w in zip(got_grads, want_grads):  # d/d input, d/d kernel
      _assert_close(g, w)


@pytest.mark.parametrize('name,x_shape,k_shape', TRANSPOSE_SHAPES,
                         ids=[c[0] for c in TRANSPOSE_SHAPES])
def test_transposed_conv_phases_equal_xlas_with_gradients(name, x_shape, k_shape):
  x, kernel, key = _inputs(x_shape, k_shape)
  conv = lambda impl: lambda v, k: convolution.conv_transpose_k4s2p1(v, k, impl=impl)
  (want, want_grads), (got, got_grads) = _all_value_and_grads(
      [conv('native'), conv('cpu')], x, kernel, key)
  assert got.shape == want.shape == (x_shape[0], 2 * x_shape[1], 2 * x_shape[2], k_shape[-1])
  _assert_close(got, want)
  for g, w in zip(got_grads, want_grads):
    _assert_close(g, w)


def test_auto_is_the_matmul_forms_on_cpu_and_bad_names_are_refused():
  assert jax.default_backend() == 'cpu'  # the test machine; on GPU/TPU 'auto' is 'native'
  assert convolution.resolve('auto') == 'cpu'
  assert convolution.resolve('native') == 'native'
  with pytest.raises(ValueError, match="conv_impl: 'cudnn'"):
    convolution.resolve('cudnn')
  x, kernel, _ = _inputs((1, 6, 6, 2), (3, 3, 2, 2))
  with pytest.raises(ValueError, match='cpu_form'):
    convolution.conv2d(x, kernel, impl='cpu', cpu_form='winograd')


def test_a_checkpoint_runs_the_same_under_either_implementation():
  """Same parameters, same logits: a run can move between a CPU and a GPU."""
  # Jitted: one compilation each instead of one per operation.
  x = jax.random.uniform(jax.random.PRNGKey(0), (3, 28, 28, 1))
  variables = jax.jit(LeNet5(conv_impl='cpu').init)(jax.random.PRNGKey(1), x)
  assert jax.tree_util.tree_structure(variables) == jax.tree_util.tree_structure(
      jax.eval_shape(LeNet5(conv_impl='native').init, jax.random.PRNGKey(1), x))
  lenet = lambda impl: jax.jit(LeNet5(conv_impl=impl).apply)(variables, x)
  _assert_close(lenet('cpu'), lenet('native'))

  inputs = jax.random.normal(jax.random.PRNGKey(2), (4, 28, 28, 3))
  z = jax.random.normal(jax.random.PRNGKey(3), (4, 8))
  labels = jnp.arange(4)
  generator = lambda impl: Generator(out_channels=1, width=8, conv_impl=impl)
  gen_vars = jax.jit(generator('cpu').init)(jax.random.PRNGKey(4), inputs, z, labels)
  run = lambda impl: jax.jit(lambda v: generator(impl).apply(v, inputs, z, labels,
                                                             train=False))(gen_vars)
  _assert_close(run('cpu'), run('native'))
