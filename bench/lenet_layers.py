"""Why LeNet-5 uses RowConv / PatchConv and a reshape max-pool, and why PGD's loop is rolled.

  python bench/lenet_layers.py            # all cores
  taskset -c 0 python bench/lenet_layers.py   # one core

Times, in one process and interleaved: (1) each LeNet-5 conv as XLA's convolution, as
patches @ kernel and as stacked rows @ a row-Toeplitz kernel matrix, forward and both
gradients; (2) max pooling as reduce_window vs reshape; (3) the PGD-10 training step
with the attack loop rolled vs unrolled; (4) the PGD-10 step of the previous LeNet-5
(PatchConv conv1, XLA conv2) vs the current one (RowConv conv1 and conv2).
"""

import os
import sys
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from configs import mnist  # noqa: E402
from l2lda_jax import sharding, train  # noqa: E402
from l2lda_jax.models import create_classifier  # noqa: E402
import functools  # noqa: E402

from l2lda_jax.models.classifiers import Conv, max_pool_2x2  # noqa: E402

# The two CPU forms of l2lda_jax.models.convolution that LeNet-5 uses, as layers.
PatchConv = functools.partial(Conv, cpu_form='patches', impl='cpu')
RowConv = functools.partial(Conv, cpu_form='rows', impl='cpu')


def median_ms(fn, *args, repeats=30):
  fn = jax.jit(fn)
  jax.block_until_ready(fn(*args))
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - start)
  return 1000 * float(np.median(times))


def conv_rows():
  rows = []
  for name, shape, features, padding in (('conv1', (100, 28, 28, 1), 6, 2),
                                         ('conv2', (100, 14, 14, 6), 16, 0),
                                         ('conv3', (100, 5, 5, 16), 120, 0)):
    x = jax.random.uniform(jax.random.PRNGKey(0), shape)
    xla = nn.Conv(features, (5, 5), padding=padding)
    patch = PatchConv(features, 5, padding=padding)
    row = RowConv(features, 5, padding=padding)
    params = xla.init(jax.random.PRNGKey(1), x)
    for label, module in (('xla conv', xla), ('patches', patch), ('row-Toeplitz', row)):
      loss = lambda p, v: jnp.sum(module.apply(p, v) ** 2)
      rows.append((name, label, median_ms(lambda v: module.apply(params, v), x),
                   median_ms(jax.grad(loss, argnums=1), params, x),
                   median_ms(jax.grad(loss), params, x)))
  return rows


def pool_rows():
  x = jax.random.normal(jax.random.PRNGKey(0), (100, 28, 28, 6))
  rows = []
  for label, pool in (('nn.max_pool', lambda v: nn.max_pool(v, (2, 2), (2, 2))),
                      ('reshape max', max_pool_2x2)):
    rows.append(('pool', label, median_ms(pool, x),
                 median_ms(jax.grad(lambda v: jnp.sum(pool(v) ** 2)), x), float('nan')))
  return rows


class PreviousLeNet5(nn.Module):
  """LeNet-5 as it was before RowConv: PatchConv conv1, XLA convolution conv2."""

  @nn.compact
  def __call__(self, x, train: bool = False):
    del train
    x = max_pool_2x2(nn.relu(PatchConv(6, 5, padding=2, name='conv1')(x)))
    x = max_pool_2x2(nn.relu(nn.Conv(16, (5, 5), padding='VALID', name='conv2')(x)))
    x = nn.relu(PatchConv(120, 5, name='conv3')(x)).reshape((x.shape[0], -1))
    return nn.Dense(10, name='fc2')(nn.relu(nn.Dense(84, name='fc1')(x)))


def pgd_step_ms(variants, rounds=6, steps_per_round=10):
  """{label: median ms} of the :cpu PGD-10 training step; variants = {label: (model, unroll)}."""
  mesh = sharding.make_data_mesh()
  rng = np.random.default_rng(0)
  batch = sharding.shard_batch(mesh, rng.integers(0, 256, (100, 28, 28, 1), dtype=np.uint8),
                               rng.integers(0, 10, 100).astype(np.int32))
  runs = {}
  for label, (model, unroll) in variants.items():
    config = mnist.get_config('cpu')
    config.method = 'pgd'
    config.attack.unroll = unroll
    tx = train.make_optimizer(config.train)
    state = sharding.replicate(mesh, train.init_train_state(model, tx, (28, 28, 1), 0))
    _, step = train.make_train_steps(config, model, tx, 10, 1)
    state, metrics = step(state, *batch)
    jax.block_until_ready(metrics)
    runs[label] = [step, state, []]
  for _ in range(rounds):  # interleaved, so machine noise hits both alike
    for run in runs.values():
      start = time.perf_counter()
      for _ in range(steps_per_round):
        run[1], metrics = run[0](run[1], *batch)
      jax.block_until_ready(metrics)
      run[2].append((time.perf_counter() - start) / steps_per_round)
  return {label: 1000 * float(np.median(r[2])) for label, r in runs.items()}


def main():
  print('| layer | form | forward ms | d/dx ms | d/dparams ms |\n|---|---|---|---|---|')
  for name, label, fwd, dx, dw in conv_rows() + pool_rows():
    print(f'| {name} | {label} | {fwd:.2f} | {dx:.2f} | {dw:.2f} |')
  lenet = create_classifier('lenet5')
  print('\nPGD-10 training step (batch 100), median ms:',
        pgd_step_ms({'rolled': (lenet, False), 'unrolled': (lenet, True)}))
  print('PGD-10 training step (batch 100, rolled), median ms:',
        pgd_step_ms({'previous LeNet-5': (PreviousLeNet5(), False),
                     'current LeNet-5': (lenet, False)}))


if __name__ == '__main__':
  main()
