"""Speed of the compiled training steps, side by side with PyTorch eager on the same machine.

  python bench/benchmark.py                 # everything (paper shapes take minutes on a CPU)
  python bench/benchmark.py --only=pgd10,l2lda_cpu --repeats=5

For each step: compile time, median step time, images/s, FLOPs from XLA's cost analysis,
and the fraction of this machine's measured float32 matmul peak. The PyTorch column runs
bench/torch_reference.py (torch 2.13 CPU; a benchmark-only dependency) in the same process.
"""

import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# Before JAX or PyTorch start threads; the PyTorch reference in this process gets the same
# allocator (set L2LDA_KEEP_MALLOC_DEFAULTS=1 to time both with malloc's defaults).
from l2lda_jax import host_memory  # noqa: E402

KEPT_FREED_MEMORY = host_memory.keep_freed_memory()

from absl import app, flags  # noqa: E402
import jax  # noqa: E402
import numpy as np  # noqa: E402

from bench import step_timer  # noqa: E402
from configs import mnist  # noqa: E402
from l2lda_jax import sharding, train  # noqa: E402
from l2lda_jax.models import create_classifier  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_list('only', [], 'Cases to run (default: all): ' 'pgd10, l2lda_cpu, l2lda_paper.')
flags.DEFINE_integer('repeats', 3, 'Timed steps per implementation (median reported).')
flags.DEFINE_boolean('torch', True, 'Also time the PyTorch-eager reference.')
flags.DEFINE_string('json', '', 'Write the results here as JSON too.')
flags.DEFINE_string('torch_device', '', 'cpu or cuda (default: cuda when JAX runs on a GPU).')
flags.DEFINE_integer('batch_size', 0, 'Override every case\'s batch (0: the case\'s own), e.g. '
                     'a multiple of the device count for a multi-device run.')

# name -> (method, batch, T, generator width); batch is before L2L-DA's doubling.
CASES = {
    'pgd10': ('pgd', 100, 10, 0),
    'l2lda_cpu': ('l2lda', None, None, None),  # the shapes of configs/mnist.py:cpu
    'l2lda_paper': ('l2lda', 100, 10, 64),
}


def matmul_peak_flops(n: int, repeats: int = 10) -> float:
  """Measured float32 matmul throughput (XLA's default precision) through XLA, in FLOP/s."""
  a = jax.random.normal(jax.random.PRNGKey(0), (n, n))
  matmul = jax.jit(lambda x: x @ x)
  matmul(a).block_until_ready()
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    matmul(a).block_until_ready()
    times.append(time.perf_counter() - start)
  return 2 * n ** 3 / min(times)


def case_config(name: str):
  method, batch, steps, width = CASES[name]
  config = mnist.get_config('cpu')
  config.method = method
  if batch is not None:
    config.train.batch_size = batch
    config.generator.steps = steps
    config.generator.width = width
  return config


def xla_flops(jitted, *args) -> float:
  analysis = jitted.lower(*args).compile().cost_analysis()
  analysis = analysis[0] if isinstance(analysis, (list, tuple)) else analysis
  return float(analysis.get('flops', float('nan')))


def time_jax_step(config, repeats: int) -> dict:
  mesh = sharding.make_data_mesh()
  model = create_classifier(config.model, conv_impl=config.conv_impl)
  tx = train.make_optimizer(config.train)
  state = sharding.replicate(mesh, train.create_train_state(config, model, tx, (28, 28, 1), 10))
  _, step = train.make_train_steps(config, model, tx, 10, 1)
  batch = config.train.batch_size
  rng = np.random.default_rng(0)
  images, labels = sharding.shard_batch(
      mesh, rng.integers(0, 256, (batch, 28, 28, 1), dtype=np.uint8),
      rng.integers(0, 10, batch).astype(np.int32))
  # FLOPs of the fully unrolled program: XLA counts a rolled loop's body only once.
  unrolled = config.copy_and_resolve_references()
  unrolled.attack.unroll = True
  unrolled.generator.unroll = True
  _, unrolled_step = train.make_train_steps(unrolled, model, tx, 10, 1)
  flops = xla_flops(unrolled_step, state, images, labels)
  start = time.perf_counter()
  state, metrics = step(state, images, labels)
  jax.block_until_ready(metrics)
  compile_seconds = time.perf_counter() - start

  def one_step():
    nonlocal state
    state, metrics = step(state, images, labels)
    jax.block_until_ready(metrics)

  # One untimed step after the compiling one (PyTorch's side has two): the host heap
  # settles (grows to its steady size) over the first steps.
  timing = step_timer.time_step(one_step, warmup=1, repeats=repeats)
  # Kernel time (page faults above all) per step: what host_memory is there to remove.
  return {'compile_s': compile_seconds, 'median_s': float(timing['median']), 'flops': flops,
          'system_s_per_step': timing['system_s_per_step']}


def time_torch_step(config, repeats: int, device: str) -> dict:
  import torch
  from bench import torch_reference
  torch.set_num_threads(os.cpu_count())
  batch = config.train.batch_size
  if config.method == 'pgd':
    step_fn, _ = torch_reference.make_pgd_step(batch=batch, k=config.attack.pgd_steps,
                                               eps=config.eps, device=device)
  else:
    step_fn, _ = torch_reference.make_l2lda_step(
        batch=batch, T=config.generator.steps, width=config.generator.width, eps=config.eps,
        lam=config.generator.diversity_weight, device=device)
  synchronize = torch.cuda.synchronize if device == 'cuda' else (lambda: None)
  result = step_timer.time_step(step_fn, warmup=2, repeats=repeats, synchronize=synchronize)
  return {'median_s': float(result['median']),
          'system_s_per_step': float(result['system_s_per_step'])}


def main(argv):
  del argv
  on_gpu = jax.default_backend() == 'gpu'
  peak = matmul_peak_flops(8192 if on_gpu else 2048)
  torch_device = FLAGS.torch_device or ('cuda' if on_gpu else 'cpu')
  print(f'devices: {jax.device_count()} x {jax.devices()[0].platform}  '
        f'measured f32 matmul peak: {peak / 1e9:.1f} GFLOP/s  '
        f'PyTorch on: {torch_device}  malloc keeps freed memory: {KEPT_FREED_MEMORY}')
  rows = []
  for name in FLAGS.only or list(CASES):
    config = case_config(name)
    if FLAGS.batch_size:
      config.train.batch_size = FLAGS.batch_size
    result = dict(name=name, batch=config.train.batch_size, devices=jax.device_count(),
                  **time_jax_step(config, FLAGS.repeats))
    if FLAGS.torch:
      torch_result = time_torch_step(config, FLAGS.repeats, torch_device)
      result['torch_median_s'] = torch_result['median_s']
      result['torch_system_s_per_step'] = torch_result['system_s_per_step']
    result['images_per_s'] = config.train.batch_size / result['median_s']  # training images
    result['peak_fraction'] = result['flops'] / result['median_s'] / peak
    rows.append(result)
    print(json.dumps(result))
  print('\n| step | batch | compile s | JAX median s | PyTorch-eager median s | JAX/PyTorch |'
        ' images/s | GFLOP/step | % of matmul peak | system s/step JAX, PyTorch |')
  print('|---|---|---|---|---|---|---|---|---|---|')
  for r in rows:
    torch_s = r.get('torch_median_s', float('nan'))
    print(f"| {r['name']} | {r['batch']} | {r['compile_s']:.1f} | {r['median_s']:.3f} | "
          f"{torch_s:.3f} | {r['median_s'] / torch_s:.2f} | {r['images_per_s']:.0f} | "
          f"{r['flops'] / 1e9:.1f} | {100 * r['peak_fraction']:.1f} | "
          f"{r['system_s_per_step']:.2f}, {r.get('torch_system_s_per_step', float('nan')):.2f} |")
  if FLAGS.json:
    with open(FLAGS.json, 'w') as f:
      json.dump({'peak_flops': peak, 'kept_freed_memory': KEPT_FREED_MEMORY, 'rows': rows}, f,
                indent=2)


if __name__ == '__main__':
  app.run(main)
