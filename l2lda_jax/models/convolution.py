"""Every convolution of LeNet-5 and the L2L-DA generator: one entry point per kind, the
implementation chosen per backend.

  conv2d(x, kernel, stride=, padding=)        PyTorch Conv2d, zero padding, no bias
  conv_transpose_k4s2p1(x, kernel)            PyTorch ConvTranspose2d(k=4, s=2, p=1)

NHWC inputs, HWIO kernels: the parameters are Flax's nn.Conv / nn.ConvTranspose ones
whatever runs, so a checkpoint moves freely between a CPU and a GPU run.

`impl`: 'native' is XLA's own convolution (lax.conv_general_dilated / conv_transpose),
what GPUs and TPUs run best. 'cpu' is a matmul form: XLA:CPU ran these models' convolutions
and above all their gradients several times slower than the same arithmetic as matmuls
(docs/PERFORMANCE.md). 'auto' (the default) is 'cpu' on the CPU backend and 'native'
elsewhere; `config.conv_impl` overrides it for benchmarks and tests.

The CPU forms, each exact (the same sums in another order):
  'rows'     k stacked input rows @ a row-Toeplitz matrix of the kernel (LeNet conv1/conv2)
  'patches'  the k x k patches @ the kernel (LeNet conv3, whose kernel covers its input)
  'taps'     matmuls over the kernel taps of a spatial-major flat buffer (the generator);
             a stride-2 k=4 conv is space-to-depth and a 2x2 taps conv; the transposed
             conv is one 2x2 taps conv with 4F outputs read at four phases.
"""

import jax
import jax.numpy as jnp
import numpy as np

IMPLEMENTATIONS = ('auto', 'native', 'cpu')
CPU_FORMS = ('rows', 'patches', 'taps')
_NHWC = ('NHWC', 'HWIO', 'NHWC')


def resolve(impl: str) -> str:
  """'auto' -> 'cpu' on the CPU backend, 'native' on GPU and TPU; others unchanged."""
  if impl not in IMPLEMENTATIONS:
    raise ValueError(f'conv_impl: {impl!r} is not one of {", ".join(IMPLEMENTATIONS)}')
  if impl == 'auto':
    return 'cpu' if jax.default_backend() == 'cpu' else 'native'
  return impl


# ----------------------------------------------------------------------------- entry points
def conv2d(x: jax.Array, kernel: jax.Array, *, stride: int = 1, padding: int = 0,
           impl: str = 'auto', cpu_form: str = 'taps') -> jax.Array:
  """PyTorch's Conv2d(stride, padding, bias=False) on NHWC `x` with an HWIO `kernel`.

  `cpu_form` picks the matmul form when the CPU implementation runs (stride 1: any of
  CPU_FORMS; stride 2: only k = 4, padding 1, the generator's down-convs, as taps).
  """
  if resolve(impl) == 'native':
    return jax.lax.conv_general_dilated(x, kernel, (stride, stride),
                                        [(padding, padding)] * 2, dimension_numbers=_NHWC)
  x = pad_hw(x, padding)
  if stride == 2:
    if kernel.shape[:2] != (4, 4) or padding != 1:
      raise ValueError('conv2d: the CPU form of a stride-2 conv is for k = 4, padding 1')
    return _stride2_k4_taps(x, kernel)
  if stride != 1:
    raise ValueError(f'conv2d: the CPU forms take stride 1 or 2, not {stride}')
  if cpu_form == 'rows':
    return _rows_conv(x, kernel)
  if cpu_form == 'patches':
    return _patches_conv(x, kernel)
  if cpu_form == 'taps':
    return conv_taps(x, kernel)
  raise ValueError(f'conv2d: cpu_form {cpu_form!r} is not one of {", ".join(CPU_FORMS)}')


def conv_transpose_k4s2p1(x: jax.Array, kernel: jax.Array, *, impl: str = 'auto') -> jax.Array:
  """PyTorch's ConvTranspose2d(k=4, s=2, p=1, bias=False), which doubles H and W, with the
  kernel as Flax's ConvTranspose holds it (padding 2, no flip: with learned weights only a
  re-parameterisation of PyTorch's)."""
  if resolve(impl) == 'native':
    return jax.lax.conv_transpose(x, kernel, (2, 2), ((2, 2), (2, 2)),
                                  dimension_numbers=_NHWC)
  return _transpose_phases(x, kernel)


# ----------------------------------------------------------------------------- CPU forms
def pad_hw(x: jax.Array, p: int) -> jax.Array:
  return x if p == 0 else jnp.pad(x, ((0, 0), (p, p), (p, p), (0, 0)))


def row_toeplitz(kernel: jax.Array, in_width: int) -> jax.Array:
  """(k, k, C, F) kernel -> (k * in_width * C, out_width * F) matrix T with
  T[i, p, c, o, f] = kernel[i, p - o, c, f] (zero where p - o is outside the kernel).

  Multiplying k stacked input rows by T gives one VALID output row.
  """
  kh, kw, c, f = kernel.shape
  out_width = in_width - kw + 1
  shift = np.zeros((kw, in_width, out_width), np.float32)
  for j in range(kw):
    shift[j, np.arange(out_width) + j, np.arange(out_width)] = 1.0
  toeplitz = jnp.einsum('jpo,ijcf->ipcof', shift, kernel)
  return toeplitz.reshape(kh * in_width * c, out_width * f)


def _rows_conv(x: jax.Array, kernel: jax.Array) -> jax.Array:
  """VALID stride-1 conv row by row: for LeNet's small images and few channels one
  well-shaped matmul per direction of autodiff (a PGD-10 step in 0.32x the time of XLA's
  convolution, docs/PERFORMANCE.md)."""
  k, _, c, f = kernel.shape
  n, h, w, _ = x.shape
  out_h, out_w = h - k + 1, w - k + 1
  rows = jnp.stack([x[:, i:i + out_h] for i in range(k)], axis=2).reshape(n, out_h, k * w * c)
  return (rows @ row_toeplitz(kernel, w)).reshape(n, out_h, out_w, f)


def _patches_conv(x: jax.Array, kernel: jax.Array) -> jax.Array:
  """VALID stride-1 conv as patches @ kernel: XLA:CPU ran a conv whose kernel is as large
  as its input (LeNet's conv3) several times slower than this matmul."""
  k, _, c, f = kernel.shape
  n, h, w, _ = x.shape
  out_h, out_w = h - k + 1, w - k + 1
  patches = jnp.stack([x[:, i:i + out_h, j:j + out_w, :] for i in range(k) for j in range(k)],
                      axis=3)
  return patches.reshape(n, out_h, out_w, k * k * c) @ kernel.reshape(k * k * c, f)


def conv_taps(x: jax.Array, kernel: jax.Array, form: str | None = None) -> jax.Array:
  """A VALID stride-1 convolution as matmuls over the kernel taps.

  XLA:CPU's own convolution gradients, the kernel gradient above all, were several times
  slower at the generator's shapes (docs/PERFORMANCE.md). The input is laid out
  spatial-major and flattened, (Hp * Wp, N, C), so that a tap (a, b) is a shift by
  a * Wp + b rows; each output row is computed at all Wp columns and the kw - 1 past the
  edge are dropped at the end. Of two ways to organise the matmuls, the one that moves
  fewer floats for this layer's (C, F) is used (`taps_form`) unless `form` names one.
  """
  n, hp, wp, c = x.shape
  kh, kw, _, f = kernel.shape
  oh, ow = hp - kh + 1, wp - kw + 1
  flat = x.transpose(1, 2, 0, 3).reshape(hp * wp, n, c)
  product = _TAPS_FORMS[form or taps_form(c, f, kh * kw)]
  out = product(flat, kernel, wp, oh * wp)
  return out.reshape(oh, wp, n, f)[:, :ow].transpose(2, 0, 1, 3)


def taps_form(c: int, f: int, taps: int) -> str:
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


_TAPS_FORMS = {'im2col': _im2col_product, 'wide': _wide_product}


def space_to_depth(x: jax.Array) -> jax.Array:
  """(N, H, W, C) -> (N, H/2, W/2, 4C), each 2x2 block's pixels stacked as (row, col, C)."""
  n, h, w, c = x.shape
  x = x.reshape(n, h // 2, 2, w // 2, 2, c).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(n, h // 2, w // 2, 4 * c)


def _stride2_k4_taps(padded: jax.Array, kernel: jax.Array) -> jax.Array:
  """A k=4, stride-2 conv of an already padded input: space-to-depth, then a 2x2 stride-1
  conv whose kernel is the 4x4 one regrouped, K'[a, b, (r, s, c)] = K[2a + r, 2b + s, c]."""
  c, f = kernel.shape[2:]
  regrouped = kernel.reshape(2, 2, 2, 2, c, f).transpose(0, 2, 1, 3, 4, 5)
  return conv_taps(space_to_depth(padded), regrouped.reshape(2, 2, 4 * c, f))


def _transpose_phases(x: jax.Array, kernel: jax.Array) -> jax.Array:
  """ConvTranspose(k=4, s=2, p=1): output pixel (2i + r, 2j + s) sees only the input window
  starting at (i + r - 1, j + s - 1) through kernel taps (2a + r, 2b + s), so one 2x2
  stride-1 conv with 4F outputs over the padded input, then each phase (r, s) read at its
  offset."""
  n, h, w, c = x.shape
  f = kernel.shape[-1]
  phase_kernel = kernel.reshape(2, 2, 2, 2, c, f).transpose(0, 2, 4, 1, 3, 5)
  y = conv_taps(pad_hw(x, 1), phase_kernel.reshape(2, 2, c, 4 * f))
  y = y.reshape(n, h + 1, w + 1, 2, 2, f)
  rows = [jnp.stack([y[:, r:r + h, s:s + w, r, s] for s in (0, 1)], axis=3) for r in (0, 1)]
  return jnp.stack(rows, axis=2).reshape(n, 2 * h, 2 * w, f)  # (n, h, r, w, s, f)
