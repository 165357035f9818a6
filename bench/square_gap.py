"""Where does Square beat the gradient attacks? Random-noise and query-budget profile of models.

  python bench/square_gap.py runs/mnist_cpu_l2lda_v2 runs/mnist_cpu_pgd --num_examples=500

For each run's best checkpoint, on validation images (never the test set), the accuracy under:
  - dense random perturbations of the whole eps-ball: uniform noise, random +-eps signs,
    and Square's own starting point (vertical +-eps stripes), each the worst of DRAWS draws;
  - Square (Linf, margin loss) after 1, 10, 100, 1,000 and 5,000 queries;
  - PGD-100 (step eps/12, random start), and the per-example worst of PGD-100 and Square;
and the share of input pixels whose CE gradient is exactly zero, at x and at x plus uniform
noise (`zero_grad_at_x`, `zero_grad_at_noise`, in %).
A model that is robust along its gradients but not to dense noise shows a large drop at the
noise rows and at Square's first queries; a model whose loss is only locally misleading loses
late, over many queries. A model that flattened its loss where its attacks start shows many
zero-gradient pixels at x and few at noise. Prints one JSON line per run.
"""

import argparse
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

DRAWS = 10
QUERY_BUDGETS = (1, 10, 100, 1000, 5000)


def worst_of_draws(logits_fn, x, y, key, perturb, draws=DRAWS):
  """Per-example: correct under every one of `draws` draws of `perturb(key, x)`."""
  import jax
  import jax.numpy as jnp
  correct = jnp.ones(y.shape, bool)
  for k in jax.random.split(key, draws):
    correct &= jnp.argmax(logits_fn(perturb(k, x)), -1) == y
  return correct


def zero_gradient_pixels(logits_fn, x, y):
  """How many input pixels have a CE gradient of exactly zero (ReLUs dead around them)."""
  import jax
  import jax.numpy as jnp
  loss = lambda v: jnp.sum(-jax.nn.log_softmax(logits_fn(v))[jnp.arange(y.shape[0]), y])
  return jnp.sum(jax.grad(loss)(x) == 0)


def noise_families(eps: float):
  import jax
  import jax.numpy as jnp
  from l2lda_jax.attacks.square import stripe_init
  box = lambda x, d: jnp.clip(x + d, 0.0, 1.0)
  return {
      'uniform': lambda k, x: box(x, jax.random.uniform(k, x.shape, minval=-eps, maxval=eps)),
      'signs': lambda k, x: box(x, eps * jnp.sign(jax.random.normal(k, x.shape))),
      'stripes': lambda k, x: stripe_init(k, x, eps),
  }


def profile(workdir: str, num_examples: int, batch_size: int, seed: int) -> dict:
  import jax
  import jax.numpy as jnp
  from l2lda_jax import data as data_lib, robustness
  from l2lda_jax.attacks.gradient import pgd
  from l2lda_jax.attacks.square import margin_loss, square_linf_run

  classifier = robustness.restore_classifier(workdir, 'best')
  eps = float(classifier.config.eps)
  split = data_lib.load_dataset(classifier.config.data).validation.take(num_examples)
  logits_fn = lambda x: classifier.apply_fn(classifier.variables, x)
  families = noise_families(eps)

  @jax.jit
  def batch_profile(x, y, key):
    keys = jax.random.split(key, 4 + len(QUERY_BUDGETS))  # noise 0-2, PGD 3, Square 4-
    rows = {'clean': jnp.argmax(logits_fn(x), -1) == y}
    for i, (name, perturb) in enumerate(families.items()):
      rows[name] = worst_of_draws(logits_fn, x, y, keys[i], perturb)
    for budget, k in zip(QUERY_BUDGETS, keys[4:]):
      result = square_linf_run(logits_fn, x, y, k, eps=eps, n_queries=budget)
      rows[f'square{budget}'] = rows['clean'] & (margin_loss(logits_fn(result.x_adv), y) > 0)
    x_pgd = pgd(logits_fn, x, y, keys[3], eps=eps, steps=100, step_size=eps / 12)
    rows['pgd100'] = jnp.argmax(logits_fn(x_pgd), -1) == y
    rows['worst'] = rows['pgd100'] & rows[f'square{QUERY_BUDGETS[-1]}']
    noisy = families['uniform'](keys[0], x)
    zero = {name: zero_gradient_pixels(logits_fn, v, y) for name, v in
            (('zero_grad_at_x', x), ('zero_grad_at_noise', noisy))}
    return rows, zero

  key = jax.random.PRNGKey(seed)
  totals, pixels = {}, {}
  for start in range(0, len(split), batch_size):
    x = data_lib.to_float(jnp.asarray(split.images[start:start + batch_size]))
    y = jnp.asarray(split.labels[start:start + batch_size])
    rows, zero = batch_profile(x, y, jax.random.fold_in(key, start))
    for name, correct in rows.items():
      totals[name] = totals.get(name, 0) + int(np.asarray(correct).sum())
    for name, count in zero.items():
      pixels[name] = pixels.get(name, 0) + int(count)
  pixel_count = int(np.prod(split.images.shape))
  return {'workdir': workdir, 'step': classifier.step, 'examples': len(split),
          **{name: round(100 * count / len(split), 2) for name, count in totals.items()},
          **{name: round(100 * count / pixel_count, 2) for name, count in pixels.items()}}


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('workdirs', nargs='+')
  parser.add_argument('--num_examples', type=int, default=500)
  parser.add_argument('--batch_size', type=int, default=250)
  parser.add_argument('--seed', type=int, default=0)
  args = parser.parse_args()
  for workdir in args.workdirs:
    print(json.dumps(profile(workdir, args.num_examples, args.batch_size, args.seed)), flush=True)


if __name__ == '__main__':
  main()
