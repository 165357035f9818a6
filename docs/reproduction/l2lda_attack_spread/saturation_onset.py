"""When does the learned attack against a robust model saturate: at initialisation, or by training?

saturated_tanh.py measured that the generator trained against the PGD10-trained surrogate C
emits |tanh G| > 0.99 at 96% of its outputs. This trains the same fresh generator with the
same key as diversity_against_a_robust_model.py (the recipe: weight 0.5) for 0, 10, 30 and
100 steps (each a prefix of the next: the batch and z of step i are drawn from
fold_in(key, i)) and prints, for steps 1 and 10 of the attack, the saturated share and
mean |tanh G|, with the cross-entropy after step 10 (one z draw, the first 1,000 test images).

  PYTHONPATH=. python docs/reproduction/l2lda_attack_spread/saturation_onset.py DIR
"""
import os, sys
import jax, jax.numpy as jnp
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from saturated_tanh import recording  # noqa: E402
from stuck_at_the_edge import eps, key, surrogate_and_test_images, trajectory  # noqa: E402
from l2lda_jax.attacks import l2lda_attack  # noqa: E402
from l2lda_jax.attacks.losses import cross_entropy  # noqa: E402

if __name__ == '__main__':
  surrogate, dataset, logits_fn, x, y = surrogate_and_test_images('surrogate_c_pgd10-seed100')
  print('  training steps  attack step  |tanh G| mean  |tanh G| > 0.99  CE after step 10')
  for steps in (0, 10, 30, 100):
    attack = l2lda_attack.train_learned_attack(
        'l2lda', surrogate.config, logits_fn, dataset.train.images, dataset.train.labels,
        own_generator=None, num_classes=10, eps=eps, unroll_steps=10, steps=steps,
        batch_size=100, draws=10, seed=0, key=jax.random.fold_in(key, 1), log=lambda _: None)
    with recording() as rows:
      x_advs = trajectory(attack, logits_fn, x, y)
    ce = float(jnp.mean(cross_entropy(logits_fn(x_advs[-1]), y)))
    for t in (1, 10):
      tanh_g = rows[t - 1][0]
      print(f'  {steps:>14}  {t:>11}  {float(jnp.mean(jnp.abs(tanh_g))):13.3f}  '
            f'{float(jnp.mean(jnp.abs(tanh_g) > 0.99)):15.3f}  {ce:16.4f}', flush=True)
