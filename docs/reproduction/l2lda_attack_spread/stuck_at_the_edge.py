"""Does a weak learned attack stop moving once it reaches the eps-ball's edge?

Table 3's cached L2L-DA transfer generators (1,000 steps against each surrogate) attack
their own surrogate: per step t of T = 10, the mean cross-entropy, how far x_adv moved
(mean |x_adv_t - x_adv_{t-1}| per pixel, in units of the step eps/4) and the share of pixels
at the ball's edge (|x_adv - x| >= eps - 1e-6, or pinned at 0 or 1 by the box), and of the
pixels that moved, the share that moved along the sign of the loss gradient (as PGD does,
by construction). One z draw per image, the first 1,000 test images.

  PYTHONPATH=. python docs/reproduction/l2lda_attack_spread/stuck_at_the_edge.py DIR

DIR: a Table 3 reproduction folder (runs/ and transfer_generators/).
"""
import functools, os, sys
import jax, jax.numpy as jnp, numpy as np
from l2lda_jax import robustness, data as data_lib, attack_specs
from l2lda_jax.attacks import learned
from l2lda_jax.attacks.losses import cross_entropy
from l2lda_jax import l2lda

R = os.path.join(sys.argv[1], 'runs') + '/'
names = ['surrogate_a_plain-seed100', 'surrogate_b_fgsm-seed100', 'surrogate_c_pgd10-seed100']
eps, n = 0.3, 1000
transfer = attack_specs.parse_attack('transfer')
options = robustness.EvalOptions(workdir=R + names[0], attacks=[transfer], num_examples=2000,
                                 batch_size=500, surrogates=[R + s for s in names],
                                 transfer_attack='l2lda',
                                 transfer_generator_cache=os.path.join(sys.argv[1], 'transfer_generators'))
key = robustness.attack_key(jax.random.PRNGKey(0), transfer)


def per_step(logits_fn, x, y, x_advs):
  """x_advs [T, N, ...] -> rows of (CE, movement in steps of eps/4, share at the edge, share
  of the moving pixels that moved along the sign of the loss gradient at the previous point)."""
  previous = jnp.concatenate([x[None], x_advs[:-1]])
  step = x_advs - previous
  moved = jnp.mean(jnp.abs(step), axis=(1, 2, 3, 4)) / (eps / 4)
  distance = jnp.abs(x_advs - x[None])
  pinned = (x_advs <= 0.0) | (x_advs >= 1.0)
  edge = jnp.mean((distance >= eps - 1e-6) | pinned, axis=(1, 2, 3, 4))
  ce = jax.vmap(lambda v: jnp.mean(cross_entropy(logits_fn(v), y)))(x_advs)
  grad = jax.vmap(jax.grad(lambda v: jnp.sum(cross_entropy(logits_fn(v), y))))(previous)
  moving = jnp.abs(step) > 1e-6
  along = jnp.sum(moving & (jnp.sign(step) == jnp.sign(grad)), axis=(1, 2, 3, 4))
  follows = along / jnp.maximum(jnp.sum(moving, axis=(1, 2, 3, 4)), 1)
  return np.stack([np.asarray(v) for v in (ce, moved, edge, follows)], 1)


def trajectory(attack, logits_fn, x, y):
  """One z draw of `attack` (a LearnedAttack): x_adv after each of its T steps."""
  settings = attack.settings
  z = jax.random.normal(jax.random.PRNGKey(1), (x.shape[0], max(settings.z_dim, 1)))[:, :settings.z_dim]
  x_advs, _, _ = learned.recursive_attack(
      l2lda.generator_fn_for(attack.generator, attack.gen.params), logits_fn, x, y, z,
      attack.gen.batch_stats, settings.options, key=jax.random.PRNGKey(2))
  return x_advs


def surrogate_and_test_images(name):
  """(the restored surrogate, its dataset, its jitted logits, the first n test images and labels)."""
  surrogate = robustness.restore_classifier(R + name)
  dataset = data_lib.load_dataset(surrogate.config.data)
  x = data_lib.to_float(jnp.asarray(dataset.test.images[:n]))
  y = jnp.asarray(dataset.test.labels[:n])
  logits_fn = jax.jit(functools.partial(surrogate.apply_fn, surrogate.variables))
  return surrogate, dataset, logits_fn, x, y


def cached_transfer_attack(surrogate, dataset):
  """Table 3's L2L-DA transfer generator for `surrogate`, from the folder's cache."""
  [attack] = robustness.train_learned_attacks('l2lda', surrogate, dataset.train, options, eps,
                                              jax.random.fold_in(key, 1), print,
                                              cache_dir=options.transfer_generator_cache)
  return attack


def print_steps(rows):
  print('  step   CE      moved (x eps/4)  at edge  moved along the gradient')
  for t, (ce, moved, edge, follows) in enumerate(rows, start=1):
    print(f'  {t:>4}  {ce:7.4f}  {moved:7.4f}          {edge:6.3f}   {follows:6.3f}')


if __name__ == '__main__':
  for name in names:
    surrogate, dataset, logits_fn, x, y = surrogate_and_test_images(name)
    attack = cached_transfer_attack(surrogate, dataset)
    x_advs = trajectory(attack, logits_fn, x, y)
    rows = per_step(logits_fn, x, y, x_advs)
    print(f'{name}: L2L-DA, accuracy at step T {float(jnp.mean(jnp.argmax(logits_fn(x_advs[-1]), -1) == y)) * 100:.2f}')
    print_steps(rows)
