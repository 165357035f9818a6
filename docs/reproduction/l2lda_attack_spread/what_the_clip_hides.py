"""Does the eps clip, or the unprojected box, hide the signal that would unpark the learned attack?

stuck_at_the_edge.py measured that a learned attack trained against the PGD10-trained
surrogate C parks almost every pixel at the ball's edge by step 4-5 and stops moving. Two
places in Eq. 5 pass the generator no gradient for a parked pixel:
  - the eps clip Proj_S: once delta_t + eps_step * tanh(G) is past eps, d delta_{t+1} / d G = 0;
  - the box clip Proj_X: delta is carried on eps-clipped only (SPEC section 1, as the authors'
    code), so on a black MNIST pixel (x = 0) a negative delta changes nothing and gets no
    gradient, and undoing it takes |delta| / eps_step steps that the loss cannot see.
This trains the L2L-DA attack against C from the same fresh generator and key as
diversity_against_a_robust_model.py (weight 0.5: the recipe) under three cells:
  - recipe: the library's attack cell (its numbers are that script's first run);
  - straight_through: Proj_S forward, identity backward;
  - box_projected: delta carried on is clip(x + delta, 0, 1) - x (Proj_{S and X}, as PGD).
Each one is a measurement of the mechanism, not a proposed recipe. Prints accuracy under 10 z
draws on the first 1,000 test images and the per-step trajectory.

  PYTHONPATH=. python docs/reproduction/l2lda_attack_spread/what_the_clip_hides.py DIR [STEPS] [CELLS]
"""
import os, sys
import jax, jax.numpy as jnp
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from stuck_at_the_edge import (eps, key, per_step, print_steps, surrogate_and_test_images,  # noqa: E402
                               trajectory)
from l2lda_jax.attacks import l2lda_attack, learned  # noqa: E402

library_cell = learned.attack_cell


def straight_through(value, clipped):
  """`clipped` forward, the gradient of `value` backward."""
  return value + jax.lax.stop_gradient(clipped - value)


def cell_with(rule):
  """learned.attack_cell with its eps projection replaced by `rule`."""

  def cell(generator_fn, logits_fn, x, labels, z, delta, batch_stats, options):
    x_adv = jnp.clip(x + delta, 0.0, 1.0)
    gn = learned.normalize_gradient(learned.input_gradient(logits_fn, x_adv, labels),
                                    options.normalize_grad)
    parts = [x, gn, delta] if options.use_delta else [x, gn]
    direction, batch_stats = generator_fn(jnp.concatenate(parts, axis=-1), z, labels,
                                          batch_stats)
    moved = delta + options.step_size * jnp.tanh(direction)
    clipped = jnp.clip(moved, -options.eps, options.eps)
    if rule == 'straight_through':
      delta = straight_through(moved, clipped)
    else:  # box_projected
      delta = jnp.clip(x + clipped, 0.0, 1.0) - x
    return delta, jnp.clip(x + delta, 0.0, 1.0), batch_stats, learned.channel_norm_mean(gn)

  return cell


cells = {'recipe': library_cell, 'straight_through': cell_with('straight_through'),
         'box_projected': cell_with('box_projected')}

if __name__ == '__main__':
  steps = int(sys.argv[2]) if len(sys.argv) > 2 else 300
  chosen = sys.argv[3].split(',') if len(sys.argv) > 3 else list(cells)
  surrogate, dataset, logits_fn, x, y = surrogate_and_test_images('surrogate_c_pgd10-seed100')
  for name in chosen:
    learned.attack_cell = cells[name]  # recursive_attack looks the cell up at trace time
    attack = l2lda_attack.train_learned_attack(
        'l2lda', surrogate.config, logits_fn, dataset.train.images, dataset.train.labels,
        own_generator=None, num_classes=10, eps=eps, unroll_steps=10, steps=steps,
        batch_size=100, draws=10, seed=0, key=jax.random.fold_in(key, 1), log=print)
    x_adv = attack(logits_fn, x, y, jax.random.PRNGKey(3))  # per image the first breaking draw
    accuracy = float(jnp.mean(jnp.argmax(logits_fn(x_adv), -1) == y))
    print(f'cell {name}, {steps} steps: accuracy under 10 draws {accuracy * 100:.2f}', flush=True)
    print_steps(per_step(logits_fn, x, y, trajectory(attack, logits_fn, x, y)))
    sys.stdout.flush()
