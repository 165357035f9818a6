"""The L2L-DA attack generator (SPEC section 2): a U-Net with a latent z and class-conditional BN.

G(x, gn, delta; z, y) -> an update direction in R^{C x H x W} (tanh is applied by the
recursive cell, Eq. 5 of the paper). The same network, with `use_delta=False` and no label,
is the one-shot L2L* generator of Chen et al.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

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


def conv_taps(x: jax.Array, kernel: jax.Array, form: str | None = None) -> jax.Array:
  """A VALID stride-1 convolution as matmuls over the kernel taps.

  Same result as lax.conv_general_dilated. XLA:CPU's own convolution gradients, the
  kernel gradient above all, were several times slower at the generator's shapes
  (docs/PERFORMANCE.md). The input is laid out spatial-major and flattened, (Hp * Wp,
  N, C), so that a tap (a, b) is a shift by a * Wp + b rows; each output row is
  computed at all Wp columns and the kw - 1 past the edge are dropped at the end. Of
  two ways to organise the matmuls, the one that moves fewer floats for this layer's
  (C, F) is used (`conv_form`) unless `form` names one.
  """
  n, hp, wp, c = x.shape
  kh, kw, _, f = kernel.shape
  oh, ow = hp - kh + 1, wp - kw + 1
  flat = x.transpose(1, 2, 0, 3).reshape(hp * wp, n, c)
  product = _FORMS[form or conv_form(c, f, kh * kw)]
  out = product(flat, kernel, wp, oh * wp)
  return out.reshape(oh, wp, n, f)[:, :ow].transpose(2, 0, 1, 3)


def conv_form(c: int, f: int, taps: int) -> str:
  """'im2col' or 'wide', whichever moves fewer floats per position of the flat buffer.

  im2col: the taps' shifted input windows concatenated along channels, then one
    matmul: writes and re-reads `taps` windows of C channels, writes F.
  wide: one matmul with all the taps' outputs side by side, then each tap's block
    shifted and summed: reads C, writes and re-reads `taps` blocks of F.
  (A third form, one matmul per tap over the whole input with its product shifted,
  moves taps * (C + 2F): always more than `wide`, and it measured slower.) So im2col
  for down0 (few input channels) and the up-convs (4F outputs), wide for `final` (one
  output channel) and the space-to-depth down-convs (4C inputs).
  """
  im2col, wide = 2 * taps * c + f, c + 2 * taps * f
  return 'im2col' if im2col < wide else 'wide'


def _pad_rows(buffer: jax.Array, count: int) -> jax.Array:
  """`count` zero rows after a (rows, N, ...) buffer: they keep the last tap's shifted
  slice in bounds."""
  return jnp.pad(buffer, ((0, count),) + ((0, 0),) * (buffer.ndim - 1))


def _matmul(flat: jax.Array, matrix: jax.Array) -> jax.Array:
  """(rows, N, C) @ (C, F) as one 2-D matmul (faster on XLA:CPU than the 3-D form)."""
  rows, n, c = flat.shape
  return (flat.reshape(rows * n, c) @ matrix).reshape(rows, n, -1)


def _im2col_product(flat, kernel, wp, rows):
  """concat over taps of shift(flat), times the kernel as a (kh * kw * C, F) matrix."""
  kh, kw, c, f = kernel.shape
  padded = _pad_rows(flat, kw - 1)
  windows = jnp.concatenate(
      [padded[a * wp + b:a * wp + b + rows] for a in range(kh) for b in range(kw)], axis=-1)
  return _matmul(windows, kernel.reshape(kh * kw * c, f))


def _wide_product(flat, kernel, wp, rows):
  """flat @ [K[0, 0] ... K[kh-1, kw-1]] in one matmul, then each tap's block shifted and summed."""
  kh, kw, c, f = kernel.shape
  products = _matmul(flat, kernel.transpose(2, 0, 1, 3).reshape(c, kh * kw * f))
  products = _pad_rows(products.reshape(flat.shape[:2] + (kh * kw, f)), kw - 1)
  out = None
  for a in range(kh):
    for b in range(kw):
      term = products[a * wp + b:a * wp + b + rows, :, a * kw + b]
      out = term if out is None else out + term
  return out


_FORMS = {'im2col': _im2col_product, 'wide': _wide_product}


def _pad_hw(x: jax.Array, p: int) -> jax.Array:
  return jnp.pad(x, ((0, 0), (p, p), (p, p), (0, 0)))


def space_to_depth(x: jax.Array) -> jax.Array:
  """(N, H, W, C) -> (N, H/2, W/2, 4C), each 2x2 block's pixels stacked as (row, col, C)."""
  n, h, w, c = x.shape
  x = x.reshape(n, h // 2, 2, w // 2, 2, c).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(n, h // 2, w // 2, 4 * c)


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

  @nn.compact
  def __call__(self, x, tiled=None):
    kernel, tiled_term = _encoder_kernel(self, 3, x, tiled, self.features, stride=1)
    return conv_taps(_pad_hw(x, 1), kernel) + tiled_term


class DownConv(nn.Module):
  """PyTorch Conv2d(k=4, s=2, p=1, bias=False), which halves H and W.

  Computed as space-to-depth of the padded input and a 2x2 stride-1 conv whose kernel
  is the 4x4 kernel regrouped: K'[a, b, (r, s, c)] = K[2a + r, 2b + s, c]. Same
  parameters and outputs as nn.Conv(features, (4, 4), (2, 2), padding=1). `tiled`
  as in `Conv3x3`.
  """
  features: int

  @nn.compact
  def __call__(self, x, tiled=None):
    c = x.shape[-1]
    kernel, tiled_term = _encoder_kernel(self, 4, x, tiled, self.features, stride=2)
    regrouped = kernel.reshape(2, 2, 2, 2, c, self.features).transpose(0, 2, 1, 3, 4, 5)
    return conv_taps(space_to_depth(_pad_hw(x, 1)),
                     regrouped.reshape(2, 2, 4 * c, self.features)) + tiled_term


class UpConv(nn.Module):
  """PyTorch ConvTranspose2d(k=4, s=2, p=1, bias=False), which doubles H and W.

  Output pixel (2i + r, 2j + s) sees only the input window starting at (i + r - 1,
  j + s - 1) through kernel taps (2a + r, 2b + s): one 2x2 stride-1 conv with 4F
  outputs over the padded input, then each phase (r, s) read at its offset. Same
  parameters and outputs as `conv_transpose_k4s2p1` (Flax's ConvTranspose with
  padding 2, which does not flip the kernel: with learned weights only a
  re-parameterisation of PyTorch's).
  """
  features: int

  @nn.compact
  def __call__(self, x):
    n, h, w, c = x.shape
    f = self.features
    kernel = self.param('kernel', _conv_init, (4, 4, c, f))
    phase_kernel = kernel.reshape(2, 2, 2, 2, c, f).transpose(0, 2, 4, 1, 3, 5)
    y = conv_taps(_pad_hw(x, 1), phase_kernel.reshape(2, 2, c, 4 * f))
    y = y.reshape(n, h + 1, w + 1, 2, 2, f)
    rows = [jnp.stack([y[:, r:r + h, s:s + w, r, s] for s in (0, 1)], axis=3) for r in (0, 1)]
    out = jnp.stack(rows, axis=2)  # (n, h, r, w, s, f)
    return out.reshape(n, 2 * h, 2 * w, f)


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
  """
  out_channels: int
  num_classes: int = 10
  width: int = 64
  z_dim: int = 8

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
    d0 = leaky(Conv3x3(w, name='down0')(inputs, z_features))
    d1 = leaky(cbn('down1_bn')(DownConv(w, name='down1')(d0, z_features), labels, train))
    d2 = leaky(DownConv(2 * w, name='down2')(d1, z_features))
    u2 = nn.relu(cbn('up2_bn')(UpConv(w, name='up2')(d2), labels, train))
    u2 = jnp.concatenate([u2, d1], axis=-1)
    u1 = nn.relu(cbn('up1_bn')(UpConv(w, name='up1')(u2), labels, train))
    u1 = jnp.concatenate([u1, d0], axis=-1)
    return Conv3x3(self.out_channels, name='final')(u1)


def z_live_units(params, z: jax.Array) -> jax.Array:
  """How many units of the z MLP's last ReLU are nonzero for at least one draw in `z`.

  z reaches the generator only through Linear -> ReLU -> Linear -> ReLU (SPEC section 2,
  the layers `z_fc1` and `z_fc2` of `Generator`). At 0 the generator ignores z: it is a
  deterministic attack, its diversity loss has no gradient, and dead ReLUs never revive.
  """
  dense = lambda name, h: h @ params[name]['kernel'] + params[name]['bias']
  features = jax.nn.relu(dense('z_fc2', jax.nn.relu(dense('z_fc1', z))))
  return jnp.sum(jnp.any(features > 0, axis=0))
