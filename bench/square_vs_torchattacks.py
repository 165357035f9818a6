"""Square attack (Linf): l2lda_jax's compiled JAX version against torchattacks' `Square`.

Not a test: a one-off comparison on one tiny model, the same weights in both frameworks.
A 784-64-10 ReLU MLP is fit for a few hundred steps to synthetic 28 x 28 "digits" (ten
smooth random prototypes plus noise); both attacks then run with the same eps, budget
and p_init on the same test images, and the script prints robust accuracy, mean queries
and wall time of each. PGD-20 is printed for scale.

torchattacks' Square is AutoAttack's code: one square location and one set of values
per iteration for the whole batch, corners in randint(0, h - s). The JAX rows are the
per-example version with the paper's corners (the default) and with the reference
corners (`reference_corners=True`).

  python bench/square_vs_torchattacks.py [--eps 0.15] [--queries 1000] [--examples 256]

Needs torch and torchattacks (`pip install torchattacks --no-deps`).
"""

import argparse
import functools
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from l2lda_jax import attacks  # noqa: E402

SIDE, HIDDEN, CLASSES = 28, 64, 10


def synthetic_digits(n: int, seed: int):
  """Ten smooth random prototypes (a 7 x 7 grid upsampled), plus pixel noise, in [0, 1]."""
  coarse = jax.random.uniform(jax.random.PRNGKey(0), (CLASSES, 7, 7, 1))
  protos = jax.image.resize(coarse, (CLASSES, SIDE, SIDE, 1), 'bilinear')
  y = jax.random.randint(jax.random.PRNGKey(100 + seed), (n,), 0, CLASSES)
  noise = 0.15 * jax.random.normal(jax.random.PRNGKey(200 + seed), (n, SIDE, SIDE, 1))
  return jnp.clip(protos[y] + noise, 0.0, 1.0), y


def mlp(params, x):
  hidden = jax.nn.relu(x.reshape(x.shape[0], -1) @ params['w1'] + params['b1'])
  return hidden @ params['w2'] + params['b2']


def fit_mlp(steps: int = 300):
  x, y = synthetic_digits(2048, 0)
  k1, k2 = jax.random.split(jax.random.PRNGKey(1))
  params = {'w1': jax.random.normal(k1, (SIDE * SIDE, HIDDEN)) / SIDE, 'b1': jnp.zeros(HIDDEN),
            'w2': jax.random.normal(k2, (HIDDEN, CLASSES)) / 8.0, 'b2': jnp.zeros(CLASSES)}
  optimizer = optax.adam(1e-2)

  def step(carry, _):
    params, state = carry
    grads = jax.grad(lambda p: optax.softmax_cross_entropy_with_integer_labels(
        mlp(p, x), y).mean())(params)
    updates, state = optimizer.update(grads, state)
    return (optax.apply_updates(params, updates), state), None

  (params, _), _ = jax.jit(lambda c: jax.lax.scan(step, c, None, length=steps))(
      (params, optimizer.init(params)))
  return params


def torch_mlp(params):
  """The same MLP in PyTorch; NCHW with one channel flattens in the same order as NHWC."""
  import torch
  model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(SIDE * SIDE, HIDDEN),
                              torch.nn.ReLU(), torch.nn.Linear(HIDDEN, CLASSES))
  with torch.no_grad():
    model[1].weight.copy_(torch.from_numpy(np.asarray(params['w1']).T.copy()))
    model[1].bias.copy_(torch.from_numpy(np.array(params['b1'])))
    model[3].weight.copy_(torch.from_numpy(np.asarray(params['w2']).T.copy()))
    model[3].bias.copy_(torch.from_numpy(np.array(params['b2'])))
  return model.eval()


def accuracy(logits_fn, x, y) -> float:
  return float(jnp.mean(jnp.argmax(logits_fn(x), -1) == y))


def run_jax(logits_fn, x, y, eps, queries, reference_corners):
  """(robust accuracy, mean queries, seconds of the second call, seconds with compile)."""
  run = jax.jit(functools.partial(attacks.square_linf_run, logits_fn, eps=eps, n_queries=queries,
                                  reference_corners=reference_corners))
  start = time.time()
  jax.block_until_ready(run(x, y, jax.random.PRNGKey(0)))
  first = time.time() - start
  start = time.time()
  result = jax.block_until_ready(run(x, y, jax.random.PRNGKey(0)))
  seconds = time.time() - start
  return accuracy(logits_fn, result.x_adv, y), float(jnp.mean(result.queries)), seconds, first


def run_torchattacks(params, x, y, eps, queries):
  import torch
  import torchattacks
  model = torch_mlp(params)
  images = torch.from_numpy(np.array(x)).permute(0, 3, 1, 2).contiguous()
  labels = torch.from_numpy(np.array(y)).long()
  attack = torchattacks.Square(model, norm='Linf', eps=eps, n_queries=queries, n_restarts=1,
                               p_init=0.8, loss='margin', resc_schedule=True, seed=0)
  attack.set_device('cpu')
  start = time.time()
  adv = attack(images, labels)
  seconds = time.time() - start
  with torch.no_grad():
    agree = float(np.max(np.abs(model(images).numpy() - np.asarray(mlp(params, x)))))
    robust = float((model(adv).argmax(1) == labels).float().mean())
  linf = float((adv - images).abs().max())
  return robust, seconds, agree, linf


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--eps', type=float, default=0.15)
  parser.add_argument('--queries', type=int, default=1000)
  parser.add_argument('--examples', type=int, default=256)
  args = parser.parse_args()

  params = fit_mlp()
  logits_fn = functools.partial(mlp, params)
  x, y = synthetic_digits(args.examples, 1)
  print(f'model: 784-64-10 MLP on synthetic 28x28 digits; {args.examples} test images, '
        f'eps {args.eps}, {args.queries} queries, p_init 0.8; {jax.devices()[0].platform}')
  print(f'clean accuracy: {accuracy(logits_fn, x, y):.4f}')
  pgd = attacks.pgd(logits_fn, x, y, jax.random.PRNGKey(0), eps=args.eps, steps=20,
                    step_size=args.eps / 4, best_iterate=True)
  print(f'PGD-20 (for scale): {accuracy(logits_fn, pgd, y):.4f}')
  for label, reference in (('paper corners', False), ('reference corners', True)):
    robust, mean_queries, seconds, first = run_jax(logits_fn, x, y, args.eps, args.queries,
                                                   reference)
    print(f'l2lda_jax square_linf ({label}): robust accuracy {robust:.4f}, mean queries '
          f'{mean_queries:.1f}, {seconds:.2f} s ({first:.2f} s with compile)')
  robust, seconds, agree, linf = run_torchattacks(params, x, y, args.eps, args.queries)
  print(f'torchattacks Square: robust accuracy {robust:.4f}, {seconds:.2f} s '
        f'(max |logit difference| JAX vs torch {agree:.2e}, max Linf {linf:.4f})')


if __name__ == '__main__':
  main()
