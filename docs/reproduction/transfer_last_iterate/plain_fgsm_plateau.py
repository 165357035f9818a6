"""Why FGSM leaves 18.95% of our Plain LeNet-5 correct (the paper: 0.90%): are the input
gradients zero (softmax saturated), or does FGSM plateau as eps grows (curvature)?

  PYTHONPATH=. python docs/reproduction/transfer_last_iterate/plain_fgsm_plateau.py DIR
"""
import functools, sys, os
import jax, jax.numpy as jnp, numpy as np
from l2lda_jax import robustness, data as data_lib
from l2lda_jax.attacks import gradient as G
R = os.path.join(sys.argv[1], 'runs') + '/'
for name in ['plain-seed0', 'surrogate_a_plain-seed100']:
  c = robustness.restore_classifier(R + name)
  ds = data_lib.load_dataset(c.config.data)
  n = 2000
  x = data_lib.to_float(jnp.asarray(ds.test.images[:n])); y = jnp.asarray(ds.test.labels[:n])
  f = functools.partial(c.apply_fn, c.variables)
  ce = lambda v: -jax.nn.log_softmax(f(v))[jnp.arange(n), y]
  g = jax.grad(lambda v: jnp.sum(ce(v)))(x)
  zero = np.asarray(jnp.all(g.reshape(n, -1) == 0, 1))
  fg = G.fgsm(f, x, y, eps=0.3)
  ok = np.asarray(jnp.argmax(f(fg), -1) == y)
  clean_ce = np.asarray(ce(x))
  logits = np.asarray(f(x)); top2 = np.sort(logits, 1)[:, -2:]; margin = top2[:, 1] - top2[:, 0]
  print(f'{name}: FGSM acc {ok.mean()*100:.2f}; zero input gradient {zero.mean()*100:.2f}%; '
        f'of FGSM survivors zero-grad {zero[ok].mean()*100:.1f}%; clean CE median {np.median(clean_ce):.2e}; '
        f'logit margin median {np.median(margin):.1f} (survivors {np.median(margin[ok]):.1f}, broken {np.median(margin[~ok]):.1f})')
  # FGSM at smaller eps: does accuracy fall monotonically with eps?
  for e in (0.1, 0.2, 0.25, 0.3, 0.4):
    print(f'  eps {e}: FGSM acc {float(jnp.mean(jnp.argmax(f(G.fgsm(f, x, y, eps=e)), -1) == y))*100:.2f}')
