"""Is the parked learned attack's tanh saturated, and is the gradient it is fed zero?

what_the_clip_hides.py found that passing the gradient through the eps clip does not unpark
the attack trained against surrogate C. Two readings are left, both measured here on
Table 3's cached transfer generators attacking their own surrogates (one z draw, the first
1,000 test images, as stuck_at_the_edge.py), per step t of T = 10:
  - tanh saturation: the share of pixels with |tanh(G)| > 0.99, where tanh' < 0.02 and the
    generator's own output passes almost no gradient back, whatever the clip does;
  - zero input gradients: the share of pixels whose loss gradient is exactly 0 (a
    thresholding first layer, usual after PGD training), which stuck_at_the_edge.py's
    "moved along the gradient" counts as not followed.

  PYTHONPATH=. python docs/reproduction/l2lda_attack_spread/saturated_tanh.py DIR
"""
import os, sys
import jax, jax.numpy as jnp
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from stuck_at_the_edge import (cached_transfer_attack, names, surrogate_and_test_images,  # noqa: E402
                               trajectory)
from l2lda_jax.attacks import learned  # noqa: E402

library_cell = learned.attack_cell
recorded = []


def recording_cell(generator_fn, logits_fn, x, labels, z, delta, batch_stats, options):
  """The library's cell, keeping each step's tanh(G) and input gradient on the side."""
  x_adv = jnp.clip(x + delta, 0.0, 1.0)
  grad = learned.input_gradient(logits_fn, x_adv, labels)
  gn = learned.normalize_gradient(grad, options.normalize_grad)
  parts = [x, gn, delta] if options.use_delta else [x, gn]
  direction, _ = generator_fn(jnp.concatenate(parts, axis=-1), z, labels, batch_stats)
  recorded.append((jnp.tanh(direction), grad))
  return library_cell(generator_fn, logits_fn, x, labels, z, delta, batch_stats, options)


def print_rows(rows):
  print('  step   |tanh G| mean  |tanh G| > 0.99  input gradient exactly 0')
  for t, (tanh_g, grad) in enumerate(rows, start=1):
    print(f'  {t:>4}  {float(jnp.mean(jnp.abs(tanh_g))):9.3f}  '
          f'{float(jnp.mean(jnp.abs(tanh_g) > 0.99)):12.3f}  {float(jnp.mean(grad == 0)):14.3f}')


if __name__ == '__main__':
  for name in names:
    surrogate, dataset, logits_fn, x, y = surrogate_and_test_images(name)
    attack = cached_transfer_attack(surrogate, dataset)
    learned.attack_cell = recording_cell
    with jax.disable_jit():  # eager, so `recorded` holds arrays, not tracers
      recorded.clear()
      trajectory(attack, logits_fn, x, y)
    learned.attack_cell = library_cell
    print(f'{name}:')
    print_rows(recorded)
    sys.stdout.flush()
