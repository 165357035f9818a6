"""Generators (and AdvGAN's discriminator) of the two generative evaluation attacks.

- AdvGAN (Xiao et al., IJCAI 2018): an image-to-image ResNet generator in the style of
  Johnson et al. / CycleGAN that Xiao et al. adopt (encoder c8-d16-d32, four r32 residual
  blocks, decoder u16-u8-c), and a small conv discriminator C8-C16-C32-FC.
- GAP (Poursaeed et al., CVPR 2018): the image-dependent ResNet generator of their public
  code (`ResnetGenerator`: c7s1-w, d2w, d4w, n residual blocks, u2w, uw, c7s1-C, tanh).

Every network downsamples twice with stride 2 and upsamples twice, so H and W must be
multiples of 4 (28x28 MNIST, 32x32 CIFAR-10); the output has the input's shape.

Instance norm throughout (GAP's code used batch norm): the perturbation of one image then
never depends on the other images in its batch, which matters because the evaluation pads
its last batch with copies of one image. Networks have no mutable state (no batch_stats).
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

# DCGAN/pix2pix init, used by both papers' code: conv weights N(0, 0.02).
_conv_init = nn.initializers.normal(0.02)


def _reflect_pad(x: jax.Array, pad: int) -> jax.Array:
  """Reflection padding over H and W (CycleGAN's ReflectionPad2d): no dark border."""
  return jnp.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)), mode='reflect')


def _conv(features: int, kernel: int, stride: int = 1, padding='VALID', use_bias=False,
          name=None) -> nn.Conv:
  return nn.Conv(features, (kernel, kernel), (stride, stride), padding=padding,
                 use_bias=use_bias, kernel_init=_conv_init, name=name)


def _norm(name=None) -> nn.InstanceNorm:
  return nn.InstanceNorm(epsilon=1e-5, name=name)


def _down(x: jax.Array, features: int, name: str) -> jax.Array:
  """d_k: 3x3 stride-2 conv, instance norm, ReLU; halves H and W (28 -> 14 -> 7)."""
  x = _conv(features, 3, 2, 'SAME', name=f'{name}_conv')(x)
  return nn.relu(_norm(f'{name}_norm')(x))


def _up(x: jax.Array, features: int, name: str) -> jax.Array:
  """u_k: 3x3 stride-2 transposed conv, instance norm, ReLU; doubles H and W exactly.

  'SAME' padding is PyTorch's ConvTranspose2d(k=3, s=2, p=1, output_padding=1).
  """
  x = nn.ConvTranspose(features, (3, 3), (2, 2), padding='SAME', use_bias=False,
                       kernel_init=_conv_init, name=f'{name}_conv')(x)
  return nn.relu(_norm(f'{name}_norm')(x))


class ResidualBlock(nn.Module):
  """r_k: x + IN(conv3x3(ReLU(IN(conv3x3(x))))), reflection-padded (Johnson et al.)."""

  @nn.compact
  def __call__(self, x):
    features = x.shape[-1]
    h = _conv(features, 3, name='conv1')(_reflect_pad(x, 1))
    h = nn.relu(_norm('norm1')(h))
    h = _conv(features, 3, name='conv2')(_reflect_pad(h, 1))
    return x + _norm('norm2')(h)


def _check_size(x: jax.Array, who: str):
  if x.ndim != 4 or x.shape[1] % 4 or x.shape[2] % 4:
    raise ValueError(f'{who}: expects NHWC images with H and W multiples of 4 '
                     f'(two stride-2 stages), got shape {x.shape}')


def _resnet_generator(x, width: int, res_blocks: int, edge_kernel: int) -> jax.Array:
  """c{k}-w, d_2w, d_4w, res_blocks x r_4w, u_2w, u_w, c{k}-C: the CycleGAN-style trunk
  shared by AdvGAN's and GAP's generators (they differ in the edge convs' kernel k)."""
  pad = edge_kernel // 2
  h = _conv(width, edge_kernel, name='c_conv')(_reflect_pad(x, pad))
  h = nn.relu(_norm('c_norm')(h))
  h = _down(h, 2 * width, 'd1')
  h = _down(h, 4 * width, 'd2')
  for i in range(res_blocks):
    h = ResidualBlock(name=f'res{i}')(h)
  h = _up(h, 2 * width, 'u2')
  h = _up(h, width, 'u1')
  return _conv(x.shape[-1], edge_kernel, use_bias=True, name='out_conv')(_reflect_pad(h, pad))


class AdvGANGenerator(nn.Module):
  """G(x) of AdvGAN: c_w, d_2w, d_4w, `res_blocks` x r_4w, u_2w, u_w, then a conv to C.

  Returns the unbounded pre-activation; the attack applies delta = eps * tanh(G(x)).
  Xiao et al. use w = 8 and four residual blocks for MNIST; the first and last convs are
  3x3 here (7x7 in CycleGAN), as in the public AdvGAN reimplementations at this scale.
  """
  width: int = 8
  res_blocks: int = 4

  @nn.compact
  def __call__(self, x):
    _check_size(x, 'AdvGANGenerator')
    return _resnet_generator(x, self.width, self.res_blocks, edge_kernel=3)


class AdvGANDiscriminator(nn.Module):
  """D(x) of AdvGAN: C_w (no norm), C_2w, C_4w (4x4 stride-2 conv, IN, LeakyReLU 0.2), FC.

  Returns one unbounded score per image: the least-squares GAN loss (Mao et al.), which
  Xiao et al. use, needs no sigmoid.
  """
  width: int = 8

  @nn.compact
  def __call__(self, x):
    _check_size(x, 'AdvGANDiscriminator')
    w = self.width
    leaky = lambda v: nn.leaky_relu(v, 0.2)
    h = leaky(_conv(w, 4, 2, 'SAME', use_bias=True, name='c1')(x))
    h = leaky(_norm('n2')(_conv(2 * w, 4, 2, 'SAME', name='c2')(h)))
    h = leaky(_norm('n3')(_conv(4 * w, 4, 2, 'SAME', name='c3')(h)))
    return nn.Dense(1, name='fc')(h.reshape(h.shape[0], -1))[:, 0]


class GAPGenerator(nn.Module):
  """The image-dependent GAP generator (Poursaeed et al.'s `ResnetGenerator`).

  c7s1-w, d_2w, d_4w, `res_blocks` x r_4w, u_2w, u_w, c7s1-C, tanh. Their ImageNet
  generator has w = 64 and 6 blocks; the attack rescales the output to Linf norm eps.
  """
  width: int = 8
  res_blocks: int = 6

  @nn.compact
  def __call__(self, x):
    _check_size(x, 'GAPGenerator')
    return jnp.tanh(_resnet_generator(x, self.width, self.res_blocks, edge_kernel=7))
