"""Which of a transfer attack's points transfers: PGD-10's first surrogate-fooling iterate,
its highest-loss iterate (the authors' mister_ed keep_best) or its last; and for L2L-DA the
first fooling z draw, the highest-loss draw or draw 0. Target: the Plain model of Table 3.

  PYTHONPATH=. python docs/reproduction/transfer_last_iterate/which_iterate_transfers.py DIR

DIR: a Table 3 reproduction folder (runs/ and transfer_generators/). "target broken by any
draw" chooses with the target's labels: an oracle bound, not a transfer number.
"""
import functools, os, sys
import jax, jax.numpy as jnp, numpy as np
from l2lda_jax import robustness, data as data_lib, attack_specs
from l2lda_jax.attacks import gradient as G, l2lda_attack

R = os.path.join(sys.argv[1], 'runs') + '/'
target = robustness.restore_classifier(R + 'plain-seed0')
names = ['surrogate_a_plain-seed100', 'surrogate_b_fgsm-seed100', 'surrogate_c_pgd10-seed100']
ds = data_lib.load_dataset(target.config.data)
n = 2000
x = data_lib.to_float(jnp.asarray(ds.test.images[:n])); y = jnp.asarray(ds.test.labels[:n])
tlog = functools.partial(target.apply_fn, target.variables)
eps = 0.3
ce = lambda logits: -jax.nn.log_softmax(logits)[jnp.arange(n), y]
def acc(logits): return float(jnp.mean(jnp.argmax(logits, -1) == y)) * 100

def pgd_all_iterates(slog, steps, size, key):
  xa = G.random_start(key, x, eps); its = [xa]
  g = jax.jit(jax.grad(lambda v: jnp.sum(ce(slog(v)))))
  for _ in range(steps):
    xa = G.project_linf(xa + size * jnp.sign(g(xa)), x, eps); its.append(xa)
  return jnp.stack(its)

def candidates(slog, points):
  """points [K,N,...] on the surrogate -> (first fooling, highest loss, argmax index, fooled [K,N])."""
  scores = jnp.stack([ce(slog(v)) for v in points])
  fooled = jnp.stack([jnp.argmax(slog(v), -1) != y for v in points])
  idx = jnp.argmax(scores, 0)
  highest = jnp.take_along_axis(points, idx[None, :, None, None, None], 0)[0]
  return l2lda_attack.first_breaking_draw(points, ~fooled), highest, idx, fooled

key = jax.random.PRNGKey(0)
opts = robustness.EvalOptions(workdir=R + 'plain-seed0', attacks=[attack_specs.parse_attack('transfer')],
  num_examples=2000, batch_size=500, surrogates=[R + s for s in names], transfer_attack='l2lda',
  transfer_generator_cache=os.path.join(sys.argv[1], 'transfer_generators'))
tkey = robustness.attack_key(jax.random.PRNGKey(0), attack_specs.parse_attack('transfer'))
for name in names:
  sur = robustness.restore_classifier(R + name)
  slog = jax.jit(functools.partial(sur.apply_fn, sur.variables))
  its = pgd_all_iterates(slog, 10, eps / 4, key)
  first, best, idx, _ = candidates(slog, its)
  print(f'{name} PGD10: first-fooling {acc(tlog(first)):.2f}  max-loss {acc(tlog(best)):.2f} '
        f'(last iterate is the max-loss one for {float(jnp.mean(idx == 10))*100:.1f}%)  last {acc(tlog(its[-1])):.2f}')
  [learned] = robustness.train_learned_attacks('l2lda', sur, ds.train, opts, eps, jax.random.fold_in(tkey, 1), print,
                                                cache_dir=opts.transfer_generator_cache)
  draws = l2lda_attack.generator_attack_examples(learned.gen, generator=learned.generator, settings=learned.settings,
      logits_fn=slog, x=x, labels=y, key=key, draws=learned.draws)
  first, best, _, dfooled = candidates(slog, draws)
  print(f'{name} L2L-DA: surrogate acc (any draw) {100 - float(jnp.mean(jnp.any(dfooled, 0)))*100:.2f}; target acc first-fooling {acc(tlog(first)):.2f} '
        f'max-loss {acc(tlog(best)):.2f} draw0 {acc(tlog(draws[0])):.2f}; target broken by any draw: {100 - float(jnp.mean(jnp.any(jnp.stack([jnp.argmax(tlog(v), -1) != y for v in draws]), 0)))*100:.2f}')
