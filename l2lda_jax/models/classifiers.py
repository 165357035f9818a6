"""Classifiers of SPEC section 3: LeNet-5 (MNIST) and ResNet-20 (CIFAR-10).

Both take NHWC images in [0, 1] and return logits, so every attack works in pixel
space. LeNet-5 starts from the authors' `weights_init_normal` (code; SPEC section 3 is
silent on it), which their trainer applies to a classifier trained from scratch:
convolution weights N(0, 0.02), linear weights Xavier-uniform, every bias zero. The
authors' ResNet-20 starts from pre-trained weights, so its initialisation is He et al.'s.
"""

from typing import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from l2lda_jax.models import convolution

# The authors' weights_init_normal (code): conv N(0, 0.02), linear Xavier-uniform, bias 0.
_conv_kernel_init = nn.initializers.normal(0.02)
_dense_kernel_init = nn.initializers.xavier_uniform()


def _conv_params(module: nn.Module, k: int, c: int, features: int):
  """nn.Conv's 'kernel' (k, k, c, features) and 'bias', initialised as the authors' code."""
  kernel = module.param('kernel', _conv_kernel_init, (k, k, c, features))
  bias = module.param('bias', nn.initializers.zeros, (features,))
  return kernel, bias


class Conv(nn.Module):
  """PyTorch's Conv2d(k, padding) with bias: nn.Conv's parameters, computed by
  `convolution.conv2d` (XLA's convolution on GPU/TPU, the `cpu_form` matmul on CPU)."""
  features: int
  kernel_size: int
  padding: int = 0
  cpu_form: str = 'rows'
  impl: str = 'auto'

  @nn.compact
  def __call__(self, x):
    kernel, bias = _conv_params(self, self.kernel_size, x.shape[-1], self.features)
    return convolution.conv2d(x, kernel, padding=self.padding, impl=self.impl,
                              cpu_form=self.cpu_form) + bias


def _pool_windows(x: jax.Array) -> jax.Array:
  """(N, H, W, C) -> (N, H/2, 2, W/2, 2, C), the 2x2 windows (an odd last row/column dropped)."""
  n, h, w, c = x.shape
  return x[:, :h // 2 * 2, :w // 2 * 2].reshape(n, h // 2, 2, w // 2, 2, c)


@jax.custom_vjp
def max_pool_2x2(x: jax.Array) -> jax.Array:
  """2x2/2 max pooling: the same values as nn.max_pool, and PyTorch's gradient.

  The gradient goes to the first maximum of each window in row-major order, as in
  PyTorch's max_pool2d, through elementwise selects that XLA:CPU fuses into loops.
  (XLA's own gradients were slower: select-and-scatter for nn.max_pool, and for a
  reshape + max a per-window count of ties, which XLA hands to a slow YNNPACK
  reduction. Ties are common: on MNIST's blank background all four inputs of a window
  equal relu(bias).)
  """
  windows = _pool_windows(x)
  # Elementwise maxima, not a max-reduction, which XLA:CPU also gives to YNNPACK.
  rows = jnp.maximum(windows[:, :, 0], windows[:, :, 1])
  return jnp.maximum(rows[:, :, :, 0], rows[:, :, :, 1])


def _max_pool_forward(x):
  out = max_pool_2x2(x)
  return out, (x, out)


def _max_pool_backward(residuals, grad):
  x, out = residuals
  windows = _pool_windows(x)
  taken = jnp.zeros(out.shape, bool)
  routed = []
  for r in (0, 1):
    for s in (0, 1):
      first_max = (windows[:, :, r, :, s] == out) & ~taken
      taken = taken | first_max
      routed.append(jnp.where(first_max, grad, 0.0))
  n, h2, w2, c = out.shape
  # (r, s) back into the window layout: (n, h2, r, w2, s, c).
  grad_windows = jnp.stack(routed, axis=-2).reshape(n, h2, w2, 2, 2, c)
  grad_windows = grad_windows.transpose(0, 1, 3, 2, 4, 5).reshape(n, 2 * h2, 2 * w2, c)
  h, w = x.shape[1:3]
  return (jnp.pad(grad_windows, ((0, 0), (0, h - 2 * h2), (0, w - 2 * w2), (0, 0))),)


max_pool_2x2.defvjp(_max_pool_forward, _max_pool_backward)


def _dense(features: int, name: str):
  return nn.Dense(features, kernel_init=_dense_kernel_init, bias_init=nn.initializers.zeros,
                  name=name)


class LeNet5(nn.Module):
  """LeNet-5 of the authors' code: 61,706 parameters for 10 classes.

  On CPU conv1 and conv2 run as row-Toeplitz matmuls and conv3 (whose 5x5 kernel covers
  its 5x5 input) as one patch matmul (`convolution`); `conv_impl` as there.
  """
  num_classes: int = 10
  conv_impl: str = 'auto'
  activation: Callable = nn.relu  # models.surrogate.surrogate_relu for an attacker's view

  @nn.compact
  def __call__(self, x, train: bool = False):
    del train  # no batch norm
    conv = lambda features, form, name, padding=0: Conv(
        features, 5, padding, form, self.conv_impl, name=name)
    relu = self.activation
    x = relu(conv(6, 'rows', 'conv1', padding=2)(x))
    x = max_pool_2x2(x)
    x = relu(conv(16, 'rows', 'conv2')(x))
    x = max_pool_2x2(x)
    x = relu(conv(120, 'patches', 'conv3')(x))
    x = x.reshape((x.shape[0], -1))
    x = relu(_dense(84, 'fc1')(x))
    return _dense(self.num_classes, 'fc2')(x)


CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)

_kaiming_normal = nn.initializers.variance_scaling(2.0, 'fan_out', 'normal')


def _batch_norm(train: bool, name: str):
  # PyTorch momentum 0.1 == Flax momentum 0.9.
  return nn.BatchNorm(use_running_average=not train, momentum=0.9,
                      epsilon=1e-5, name=name)


class BasicBlock(nn.Module):
  """He et al. BasicBlock with the option-A (parameter-free) shortcut."""
  features: int
  stride: int

  @nn.compact
  def __call__(self, x, train: bool):
    conv = lambda s, name: nn.Conv(self.features, (3, 3), (s, s), padding=1,
                                   use_bias=False, kernel_init=_kaiming_normal,
                                   name=name)
    y = nn.relu(_batch_norm(train, 'bn1')(conv(self.stride, 'conv1')(x)))
    y = _batch_norm(train, 'bn2')(conv(1, 'conv2')(y))
    shortcut = x
    if self.stride != 1 or x.shape[-1] != self.features:
      # Option A: subsample spatially, zero-pad the new channels equally on both sides.
      shortcut = x[:, ::self.stride, ::self.stride, :]
      extra = self.features - x.shape[-1]
      shortcut = jnp.pad(shortcut, ((0, 0), (0, 0), (0, 0),
                                    (extra // 2, extra - extra // 2)))
    return nn.relu(y + shortcut)


class ResNet20(nn.Module):
  """CIFAR ResNet-20 (He et al. 2016) with per-channel normalisation inside."""
  num_classes: int = 10
  stage_widths: Sequence[int] = (16, 32, 64)
  blocks_per_stage: int = 3
  mean: Sequence[float] = CIFAR10_MEAN
  std: Sequence[float] = CIFAR10_STD

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = (x - jnp.asarray(self.mean)) / jnp.asarray(self.std)
    x = nn.Conv(self.stage_widths[0], (3, 3), padding=1, use_bias=False,
                kernel_init=_kaiming_normal, name='stem_conv')(x)
    x = nn.relu(_batch_norm(train, 'stem_bn')(x))
    for stage, width in enumerate(self.stage_widths):
      for block in range(self.blocks_per_stage):
        stride = 2 if stage > 0 and block == 0 else 1
        x = BasicBlock(width, stride, name=f'stage{stage}_block{block}')(x, train)
    x = jnp.mean(x, axis=(1, 2))
    return nn.Dense(self.num_classes, name='fc')(x)


def create_classifier(name: str, num_classes: int = 10, conv_impl: str = 'auto') -> nn.Module:
  """The classifier named by `config.model`; `conv_impl` (config.conv_impl) picks LeNet-5's
  convolution implementation (ResNet-20 uses XLA's on every backend)."""
  convolution.resolve(conv_impl)  # a bad value fails here, naming the field
  if name == 'lenet5':
    return LeNet5(num_classes=num_classes, conv_impl=conv_impl)
  if name == 'resnet20':
    return ResNet20(num_classes=num_classes)
  raise ValueError(f'unknown model {name!r}; choose one of lenet5, resnet20')
