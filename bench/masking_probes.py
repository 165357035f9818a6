"""Two probes of why Square finds what the gradient attacks miss on an adversarially trained model.

  python bench/masking_probes.py runs/mnist_cpu_l2lda_v3 runs/mnist_cpu_pgd --num_examples=500

On validation images (never the test set), for each run's best checkpoint:
  - **Dead ReLUs.** PGD-100 (step eps/12, random start, best iterate, as evaluate.py's
    `pgd100`) on the true model and on smooth-ReLU views of it (`models.surrogate`: the same
    logits, ReLU's gradient replaced by sigmoid(x / temperature)). A model whose input
    gradient is exactly zero on many pixels blinds PGD there; the smooth views see through
    dead units, so if that were what Square exploits, their rows would drop towards Square's.
  - **Vertices.** For L2L-DA runs, the model's own generator (the game's settings, K draws):
    accuracy on its x_adv_T and on x_adv_T snapped to the nearest vertex of the eps-box
    (x + eps * sign(delta), clipped to [0, 1]), where Square searches. If the classifier had
    learnt to resist only the generator's interior points, the snapped rows would drop.
  - **Margins** (`--margins`): the margin logit_y - max_{j != y} logit_j at PGD-100's point
    and at Square's (5,000 queries), deciles 10 / 50 / 90, for the images only Square
    breaks and for those both leave correct. A model whose gradient attacks stop far from
    the margins Square reaches is one whose input gradients mislead.
Prints one JSON line per run (accuracies in %).
"""

import argparse
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

TEMPERATURES = (0.1, 1.0)


def accuracy_under(attack, logits_fn, x, y, batch_size: int, key) -> float:
  """% correct under attack(x, y, key), batch by batch."""
  import jax
  import jax.numpy as jnp
  correct = []
  for start in range(0, len(y), batch_size):
    xb, yb = x[start:start + batch_size], y[start:start + batch_size]
    x_adv = attack(xb, yb, jax.random.fold_in(key, start))
    correct.append(np.asarray(jnp.argmax(logits_fn(x_adv), -1) == yb))
  return round(100 * float(np.mean(np.concatenate(correct))), 2)


def smooth_relu_rows(classifier, x, y, batch_size: int, key) -> dict:
  import jax
  from l2lda_jax.attacks.gradient import pgd
  from l2lda_jax.models.classifiers import LeNet5
  from l2lda_jax.models.surrogate import surrogate_relu
  eps = float(classifier.config.eps)
  true_fn = lambda v: classifier.apply_fn(classifier.variables, v)
  rows = {}
  for temperature in (0.0,) + TEMPERATURES:
    model = LeNet5(conv_impl=classifier.config.get('conv_impl', 'auto'),
                   activation=surrogate_relu(temperature))
    view = lambda v, model=model: model.apply(classifier.variables, v)
    attack = jax.jit(lambda xb, yb, k, view=view: pgd(
        view, xb, yb, k, eps=eps, steps=100, step_size=eps / 12, best_iterate=True))
    name = 'pgd100' if temperature == 0 else f'pgd100_smooth_relu_{temperature:g}'
    rows[name] = accuracy_under(attack, true_fn, x, y, batch_size, key)  # same key: paired
  return rows


def vertex_rows(classifier, x, y, draws: int, key) -> dict:
  import jax
  import jax.numpy as jnp
  from l2lda_jax import l2lda
  from l2lda_jax.attacks import l2lda_attack
  config = classifier.config
  settings = l2lda.game_settings(config, 10)
  generator = l2lda.make_generator(settings, x.shape[-1])
  gen = l2lda.init_generator_state(generator, l2lda.make_generator_optimizer(config), settings,
                                   x.shape[1:], config.seed)
  gen, loaded = l2lda_attack.load_generator_weights(gen, classifier.generator)
  if not loaded:
    raise SystemExit(f'{config.method} run without a stored generator of the game\'s shapes')
  logits_fn = lambda v: classifier.apply_fn(classifier.variables, v)
  x_advs = l2lda_attack.generator_attack_examples(
      gen, generator=generator, settings=settings, logits_fn=logits_fn, x=x, labels=y, key=key,
      draws=draws)
  eps = float(config.eps)
  snapped = jnp.clip(x[None] + eps * jnp.sign(x_advs - x[None]), 0.0, 1.0)
  correct = lambda v: np.asarray(jnp.argmax(logits_fn(v), -1) == y)
  every = lambda vs: round(100 * float(np.mean(np.all([correct(v) for v in vs], axis=0))), 2)
  return {'generator_1_draw': every(x_advs[:1]), f'generator_{draws}_draws': every(x_advs),
          'snapped_1_draw': every(snapped[:1]), f'snapped_{draws}_draws': every(snapped),
          'boundary_share': round(float(jnp.mean(jnp.abs(x_advs - x[None]) >= eps * 0.999)), 3)}


def margins(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
  """logit_y - max_{j != y} logit_j per example (< 0: misclassified)."""
  rows = np.arange(len(labels))
  others = logits.copy()
  others[rows, labels] = -np.inf
  return logits[rows, labels] - others.max(axis=1)


def margin_rows(classifier, x, y, batch_size: int, key) -> dict:
  import jax
  from l2lda_jax.attacks.gradient import pgd
  from l2lda_jax.attacks.square import square_linf
  eps = float(classifier.config.eps)
  logits_fn = jax.jit(lambda v: classifier.apply_fn(classifier.variables, v))
  pgd_fn = jax.jit(lambda xb, yb, k: pgd(logits_fn, xb, yb, k, eps=eps, steps=100,
                                         step_size=eps / 12, best_iterate=True))
  square_fn = jax.jit(lambda xb, yb, k: square_linf(logits_fn, xb, yb, k, eps=eps))
  labels = np.asarray(y)

  def margins_under(attack):
    parts = [np.asarray(logits_fn(attack(x[s:s + batch_size], y[s:s + batch_size],
                                         jax.random.fold_in(key, s))))
             for s in range(0, len(labels), batch_size)]
    return margins(np.concatenate(parts), labels)

  at_pgd, at_square = margins_under(pgd_fn), margins_under(square_fn)
  only_square = (at_pgd > 0) & (at_square <= 0)
  both_correct = (at_pgd > 0) & (at_square > 0)
  deciles = lambda a: [round(float(v), 2) for v in np.percentile(a, [10, 50, 90])] if len(a) else []
  return {'only_square_breaks': int(only_square.sum()), 'both_correct': int(both_correct.sum()),
          'pgd_margin_where_only_square_breaks': deciles(at_pgd[only_square]),
          'pgd_margin_where_both_correct': deciles(at_pgd[both_correct]),
          'square_margin_where_both_correct': deciles(at_square[both_correct])}


def probe(workdir: str, num_examples: int, batch_size: int, draws: int, seed: int,
          with_margins: bool = False) -> dict:
  import jax
  import jax.numpy as jnp
  from l2lda_jax import data as data_lib, robustness
  classifier = robustness.restore_classifier(workdir, 'best')
  if classifier.config.model != 'lenet5':
    raise SystemExit(f'{workdir}: the smooth-ReLU view exists for LeNet-5 only')
  split = data_lib.load_dataset(classifier.config.data).validation.take(num_examples)
  x = data_lib.to_float(jnp.asarray(split.images))
  y = jnp.asarray(split.labels)
  key = jax.random.PRNGKey(seed)
  report = {'workdir': workdir, 'step': classifier.step, 'examples': len(split),
            **smooth_relu_rows(classifier, x, y, batch_size, key)}
  if classifier.config.method == 'l2lda':
    report.update(vertex_rows(classifier, x, y, draws, jax.random.fold_in(key, 1)))
  if with_margins:
    report.update(margin_rows(classifier, x, y, batch_size, jax.random.fold_in(key, 2)))
  return report


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('workdirs', nargs='+')
  parser.add_argument('--num_examples', type=int, default=500)
  parser.add_argument('--batch_size', type=int, default=250)
  parser.add_argument('--draws', type=int, default=10)
  parser.add_argument('--seed', type=int, default=0)
  parser.add_argument('--margins', action='store_true',
                      help='also the margins at PGD-100\'s and Square\'s points')
  args = parser.parse_args()
  for workdir in args.workdirs:
    print(json.dumps(probe(workdir, args.num_examples, args.batch_size, args.draws, args.seed,
                           args.margins)), flush=True)


if __name__ == '__main__':
  main()
