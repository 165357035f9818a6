"""The L2L-DA attack generator (SPEC section 2): a U-Net with a latent z and class-conditional BN.

G(x, gn, delta; z, y) -> an update direction in R^{C x H x W} (tanh is applied by the
recursive cell, Eq. 5 of the paper). The same network, with `use_delta=False` and no label,
is the one-shot L2L* generator of Chen et al.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

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


def conv_transpose_k4s2p1(features: int, name: str | None = None) -> nn.ConvTranspose:
  """PyTorch ConvTranspose2d(k=4, s=2, p=1), which doubles H and W.

  PyTorch's padding p crops the full output; as a conv over the stride-dilated input
  that is a padding of k - 1 - p = 2 on each side. (Flax does not flip the kernel;
  with learned weights this is only a re-parameterisation.)
  """
  return nn.ConvTranspose(features, (4, 4), (2, 2), padding=((2, 2), (2, 2)), use_bias=False,
                          kernel_init=_conv_init, name=name)


def _tile(z_features: jax.Array, like: jax.Array) -> jax.Array:
  n, h, w, _ = like.shape
  return jnp.broadcast_to(z_features[:, None, None, :], (n, h, w, z_features.shape[-1]))


class Generator(nn.Module):
  """U-Net encoder-decoder on concat[x, gn, delta] (SPEC section 2).

  Attributes:
    out_channels: C, the image channels.
    num_classes: classes for conditional BN; 0 uses plain BN (label ablation).
    width: 64 in the paper.
    z_dim: 8 in the paper; 0 drops z (the one-shot L2L* generator).
  """
  out_channels: int
  num_classes: int = 10
  width: int = 64
  z_dim: int = 8

  @nn.compact
  def __call__(self, inputs, z, labels, train: bool = True):
    w = self.width
    conv = lambda f, k, s, p, name: nn.Conv(f, (k, k), (s, s), padding=((p, p), (p, p)),
                                            use_bias=False, kernel_init=_conv_init, name=name)
    deconv = conv_transpose_k4s2p1
    cbn = lambda name: ConditionalBatchNorm(self.num_classes, name=name)
    leaky = lambda x: nn.leaky_relu(x, 0.2)

    with_z = lambda x: x
    if self.z_dim > 0:
      dense = lambda name: nn.Dense(self.z_dim, kernel_init=nn.initializers.xavier_uniform(),
                                    name=name)
      z_features = nn.relu(dense('z_fc2')(nn.relu(dense('z_fc1')(z))))
      with_z = lambda x: jnp.concatenate([x, _tile(z_features, x)], axis=-1)

    d0 = leaky(conv(w, 3, 1, 1, 'down0')(with_z(inputs)))
    d1 = leaky(cbn('down1_bn')(conv(w, 4, 2, 1, 'down1')(with_z(d0)), labels, train))
    d2 = leaky(conv(2 * w, 4, 2, 1, 'down2')(with_z(d1)))
    u2 = nn.relu(cbn('up2_bn')(deconv(w, 'up2')(d2), labels, train))
    u2 = jnp.concatenate([u2, d1], axis=-1)
    u1 = nn.relu(cbn('up1_bn')(deconv(w, 'up1')(u2), labels, train))
    u1 = jnp.concatenate([u1, d0], axis=-1)
    return conv(self.out_channels, 3, 1, 1, 'final')(u1)
