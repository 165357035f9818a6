"""Is it the diversity term that parks the learned attack in a corner of a robust model's ball?

Trains the L2L-DA attack against surrogate C (PGD10-trained) twice, from the same fresh
generator and key, for STEPS steps: with the recipe's diversity weight (0.5) and with 0, and
prints each one's trajectory (stuck_at_the_edge.per_step) and its accuracy under 10 z draws
on the first 1,000 test images.

  PYTHONPATH=. python docs/reproduction/l2lda_attack_spread/diversity_against_a_robust_model.py DIR [STEPS]
"""
import functools, os, sys
import jax, jax.numpy as jnp
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from stuck_at_the_edge import R, eps, key, n, per_step, print_steps, trajectory  # noqa: E402
from l2lda_jax import data as data_lib, robustness  # noqa: E402
from l2lda_jax.attacks import l2lda_attack  # noqa: E402

steps = int(sys.argv[2]) if len(sys.argv) > 2 else 300
surrogate = robustness.restore_classifier(R + 'surrogate_c_pgd10-seed100')
dataset = data_lib.load_dataset(surrogate.config.data)
x = data_lib.to_float(jnp.asarray(dataset.test.images[:n]))
y = jnp.asarray(dataset.test.labels[:n])
logits_fn = jax.jit(functools.partial(surrogate.apply_fn, surrogate.variables))
for weight in (0.5, 0.0):
  config = surrogate.config.copy_and_resolve_references()
  config.generator.diversity_weight = weight
  attack = l2lda_attack.train_learned_attack(
      'l2lda', config, logits_fn, dataset.train.images, dataset.train.labels,
      own_generator=None, num_classes=10, eps=eps, unroll_steps=10, steps=steps,
      batch_size=100, draws=10, seed=0, key=jax.random.fold_in(key, 1), log=print)
  x_adv = attack(logits_fn, x, y, jax.random.PRNGKey(3))  # per image the first breaking draw
  accuracy = float(jnp.mean(jnp.argmax(logits_fn(x_adv), -1) == y))
  print(f'diversity weight {weight}, {steps} steps: accuracy under 10 draws {accuracy * 100:.2f}')
  print_steps(per_step(logits_fn, x, y, trajectory(attack, logits_fn, x, y)))
