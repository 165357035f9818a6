"""The L2L-DA attack generator (SPEC section 2): a U-Net with a latent z and class-conditional BN.

G(x, gn, delta; z, y) -> an update direction in R^{C x H x W} (tanh is applied by the
recursive cell, Eq. 5 of the paper). The same network, with `use_delta=False` and no label,
is the one-shot L2L* generator of Chen et al.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from l2lda_jax.models import convolution

_conv_init = nn.initializers.normal(0.02)


class ConditionalBatchNorm(nn.Module):
  """BatchNorm without affine, then gamma = g_shared + g[y], beta = b_shared + b[y].

  The per-class tables are read with one_hot(y) @ table rather than a gather, which
  stays a plain matmul when the batch is sharded across devices. With
  `num_classes=0` this is ordinary affine BatchNorm (the "no label" ablation).
  """
  num_classes: int
  momentum: float = 0.9  # PyTorch momentum 0.1
  epsilon: float = 1e-10

  @nn.compact
  def __call__(self, x, labels, train: bool):
    features = x.shape[-1]
    x = nn.BatchNorm(use_running_average=not train, momentum=self.momentum,
                     epsilon=self.epsilon, use_bias=False, use_scale=False, name='norm')(x)
    gamma = self.param('gamma_shared', lambda k, s: 1.0 + 0.02 * jax.random.normal(k, s),
                       (features,))
    beta = self.param('beta_shared', nn.initializers.zeros, (features,))
    if self.num_classes > 0:
      one_hot = jax.nn.one_hot(labels, self.num_classes, dtype=x.dtype)
      gamma_table = self.param('gamma_class', nn.initializers.normal(0.02),
                               (self.num_classes, features))
      beta_table = self.param('beta_class', nn.initializers.zeros,
                              (self.num_classes, features))
      gamma = gamma + one_hot @ gamma_table
      beta = beta + one_hot @ beta_table
      gamma, beta = gamma[:, None, None, :], beta[:, None, None, :]
    return x * gamma + beta


def _encoder_kernel(module: nn.Module, size: int, x: jax.Array, tiled, features: int,
                    stride: int):
  """The kernel over concat[x, tile(tiled)] as (its x part, the tiled part's conv term).

  The parameter keeps the concatenation's shape (size, size, C + K, F); the term is 0.0
  without `tiled`. Both encoder convs pad by 1.
  """
  c = x.shape[-1]
  extra = 0 if tiled is None else tiled.shape[-1]
  kernel = module.param('kernel', _conv_init, (size, size, c + extra, features))
  if tiled is None:
    return kernel, 0.0
  return kernel[:, :, :c], tiled_conv(tiled, kernel[:, :, c:], x.shape[1:3], stride, 1)


def in_image_taps(out_size: int, in_size: int, k: int, stride: int, pad: int) -> np.ndarray:
  """(out_size, k) 0/1: 1 where tap a of output i reads an input pixel, not the padding.

  Tap a of output i reads input stride * i + a - pad.
  """
  reads = stride * np.arange(out_size)[:, None] + np.arange(k)[None, :] - pad
  return ((reads >= 0) & (reads < in_size)).astype(np.float32)


def tiled_conv(features: jax.Array, kernel: jax.Array, in_hw: tuple[int, int], stride: int,
               pad: int) -> jax.Array:
  """conv(tile(features)): the convolution of a spatially constant (N, K) input.

  The encoder convs see concat[h, tile(z)] (SPEC section 2); their kernel splits into an
  h part and a z part, and this is the z part's term. Every tap of output (i, j) reads
  the same K vector, or a zero of the padding, so the term is the sum over in-image taps
  (a, b) of features @ kernel[a, b]: N x taps x F products and a 0/1 mask, instead of a
  convolution over H x W tiled copies (at width 8 that was most of down0's work).
  """
  kh, kw, k, f = kernel.shape
  (h, w) = in_hw
  oh, ow = (h + 2 * pad - kh) // stride + 1, (w + 2 * pad - kw) // stride + 1
  rows = in_image_taps(oh, h, kh, stride, pad)
  cols = in_image_taps(ow, w, kw, stride, pad)
  mask = (rows[:, None, :, None] * cols[None, :, None, :]).reshape(oh * ow, kh * kw)
  per_tap = features @ kernel.transpose(2, 0, 1, 3).reshape(k, kh * kw * f)
  per_tap = per_tap.reshape(-1, kh * kw, f)
  # A matmul per image (batched over N) rather than one over the shared mask: its
  # gradient then contracts over positions inside each image, with no transpose of the
  # (N, H * W, F) output gradient.
  mask = jnp.broadcast_to(mask, (per_tap.shape[0],) + mask.shape)
  return jnp.einsum('npt,ntf->npf', mask, per_tap).reshape(-1, oh, ow, f)


class Conv3x3(nn.Module):
  """Conv 3x3, stride 1, padding 1, no bias (down0 and final).

  With `tiled` (N, K) features, the conv is over concat[x, tile(tiled)]: the kernel has
  C + K input channels, and the tiled part is computed by `tiled_conv`.
  """
  features: int
  impl: str = 'auto'

  @nn.compact
  def __call__(self, x, tiled=None):
    kernel, tiled_term = _encoder_kernel(self, 3, x, tiled, self.features, stride=1)
    return convolution.conv2d(x, kernel, padding=1, impl=self.impl) + tiled_term


class DownConv(nn.Module):
  """PyTorch Conv2d(k=4, s=2, p=1, bias=False), which halves H and W; `tiled` as in
  `Conv3x3`."""
  features: int
  impl: str = 'auto'

  @nn.compact
  def __call__(self, x, tiled=None):
    kernel, tiled_term = _encoder_kernel(self, 4, x, tiled, self.features, stride=2)
    return convolution.conv2d(x, kernel, stride=2, padding=1, impl=self.impl) + tiled_term


class UpConv(nn.Module):
  """PyTorch ConvTranspose2d(k=4, s=2, p=1, bias=False), which doubles H and W; the same
  parameters as `conv_transpose_k4s2p1`."""
  features: int
  impl: str = 'auto'

  @nn.compact
  def __call__(self, x):
    kernel = self.param('kernel', _conv_init, (4, 4, x.shape[-1], self.features))
    return convolution.conv_transpose_k4s2p1(x, kernel, impl=self.impl)


def conv_transpose_k4s2p1(features: int, name: str | None = None) -> nn.ConvTranspose:
  """PyTorch ConvTranspose2d(k=4, s=2, p=1) as Flax's ConvTranspose: the reference UpConv
  is tested against.

  PyTorch's padding p crops the full output; as a conv over the stride-dilated input
  that is a padding of k - 1 - p = 2 on each side. (Flax does not flip the kernel;
  with learned weights this is only a re-parameterisation.)
  """
  return nn.ConvTranspose(features, (4, 4), (2, 2), padding=((2, 2), (2, 2)), use_bias=False,
                          kernel_init=_conv_init, name=name)


class Generator(nn.Module):
  """U-Net encoder-decoder on concat[x, gn, delta] (SPEC section 2).

  Attributes:
    out_channels: C, the image channels.
    num_classes: classes for conditional BN; 0 uses plain BN (label ablation).
    width: 64 in the paper.
    z_dim: 8 in the paper; 0 drops z (the one-shot L2L* generator).
    conv_impl: 'auto' | 'native' | 'cpu' (l2lda_jax.models.convolution).
  """
  out_channels: int
  num_classes: int = 10
  width: int = 64
  z_dim: int = 8
  conv_impl: str = 'auto'  # l2lda_jax.models.convolution: matmul forms on CPU, XLA's elsewhere

  @nn.compact
  def __call__(self, inputs, z, labels, train: bool = True):
    w = self.width
    cbn = lambda name: ConditionalBatchNorm(self.num_classes, name=name)
    leaky = lambda x: nn.leaky_relu(x, 0.2)

    z_features = None
    if self.z_dim > 0:
      dense = lambda name: nn.Dense(self.z_dim, kernel_init=nn.initializers.xavier_uniform(),
                                    name=name)
      z_features = nn.relu(dense('z_fc2')(nn.relu(dense('z_fc1')(z))))

    # Each encoder conv sees concat[h, tile(z_features)] (SPEC section 2).
    impl = self.conv_impl
    d0 = leaky(Conv3x3(w, impl, name='down0')(inputs, z_features))
    d1 = leaky(cbn('down1_bn')(DownConv(w, impl, name='down1')(d0, z_features), labels, train))
    d2 = leaky(DownConv(2 * w, impl, name='down2')(d1, z_features))
    u2 = nn.relu(cbn('up2_bn')(UpConv(w, impl, name='up2')(d2), labels, train))
    u2 = jnp.concatenate([u2, d1], axis=-1)
    u1 = nn.relu(cbn('up1_bn')(UpConv(w, impl, name='up1')(u2), labels, train))
    u1 = jnp.concatenate([u1, d0], axis=-1)
    return Conv3x3(self.out_channels, impl, name='final')(u1)


def z_live_units(params, z: jax.Array) -> jax.Array:
  """How many units of the z MLP's last ReLU are nonzero for at least one draw in `z`.

  z reaches the generator only through Linear -> ReLU -> Linear -> ReLU (SPEC section 2,
  the layers `z_fc1` and `z_fc2` of `Generator`). At 0 the generator ignores z: it is a
  deterministic attack, its diversity loss has no gradient, and dead ReLUs never revive.
  """
  dense = lambda name, h: h @ params[name]['kernel'] + params[name]['bias']
  features = jax.nn.relu(dense('z_fc2', jax.nn.relu(dense('z_fc1', z))))
  return jnp.sum(jnp.any(features > 0, axis=0))
