"""Does an average of a run's last checkpoints resist the attacks better than one checkpoint?

  python bench/weight_averaging_probe.py runs/mnist_cpu_l2lda_v3 18000 17000,18000 \
      15000,16000,17000,18000 --num_examples=500

Each positional group (comma-separated kept checkpoint steps) is averaged parameter by
parameter (and BN statistics likewise), then judged on validation images (never the test
set): clean, PGD-100 (step eps/12, best iterate) and Square (5,000 queries), and the
per-example worst case of the three. A post-hoc look at what weight averaging (EMA or SWA of
the classifier) would give, without training anything. Prints one JSON line per group (%).
"""

import argparse
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def averaged_variables(workdir: str, steps: list[str]):
  import jax
  from l2lda_jax import robustness
  classifiers = [robustness.restore_classifier(workdir, step) for step in steps]
  return jax.tree_util.tree_map(lambda *leaves: sum(leaves) / len(leaves),
                                *[c.variables for c in classifiers])


def judge(workdir: str, groups: list[list[str]], num_examples: int, batch_size: int,
          seed: int):
  import jax
  import jax.numpy as jnp
  from l2lda_jax import data as data_lib, robustness
  from l2lda_jax.attacks.gradient import pgd
  from l2lda_jax.attacks.square import square_linf
  base = robustness.restore_classifier(workdir, 'best')
  eps = float(base.config.eps)
  split = data_lib.load_dataset(base.config.data).validation.take(num_examples)
  x = data_lib.to_float(jnp.asarray(split.images))
  y = jnp.asarray(split.labels)
  key = jax.random.PRNGKey(seed)
  for steps in groups:
    variables = averaged_variables(workdir, steps)
    logits_fn = jax.jit(lambda v, variables=variables: base.apply_fn(variables, v))
    attacks = {
        'pgd100': jax.jit(lambda a, b, k, f=logits_fn: pgd(f, a, b, k, eps=eps, steps=100,
                                                           step_size=eps / 12,
                                                           best_iterate=True)),
        'square': jax.jit(lambda a, b, k, f=logits_fn: square_linf(f, a, b, k, eps=eps)),
    }
    correct = {'clean': np.asarray(jnp.argmax(logits_fn(x), -1) == y)}
    for name, attack in attacks.items():
      parts = []
      for start in range(0, num_examples, batch_size):
        xb, yb = x[start:start + batch_size], y[start:start + batch_size]
        x_adv = attack(xb, yb, jax.random.fold_in(key, start))
        parts.append(np.asarray(jnp.argmax(logits_fn(x_adv), -1) == yb))
      correct[name] = np.concatenate(parts)
    row = {name: round(100 * float(c.mean()), 2) for name, c in correct.items()}
    row['worst'] = round(100 * float(np.logical_and.reduce(list(correct.values())).mean()), 2)
    print(json.dumps({'workdir': workdir, 'average_of_steps': steps, **row}), flush=True)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('workdir')
  parser.add_argument('groups', nargs='+', help='comma-separated kept checkpoint steps')
  parser.add_argument('--num_examples', type=int, default=500)
  parser.add_argument('--batch_size', type=int, default=250)
  parser.add_argument('--seed', type=int, default=0)
  args = parser.parse_args()
  judge(args.workdir, [g.split(',') for g in args.groups], args.num_examples,
        args.batch_size, args.seed)


if __name__ == '__main__':
  main()
