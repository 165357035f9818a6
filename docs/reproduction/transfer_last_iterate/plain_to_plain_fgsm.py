"""Plain-to-Plain transfer of FGSM, against FGSM white-box on the target, and how often the
two Plain models agree on clean images.

  PYTHONPATH=. python docs/reproduction/transfer_last_iterate/plain_to_plain_fgsm.py DIR
"""
import functools, os, sys
import jax, jax.numpy as jnp
from l2lda_jax import robustness, data as data_lib
from l2lda_jax.attacks import gradient as G
R = os.path.join(sys.argv[1], 'runs') + '/'
target = robustness.restore_classifier(R + 'plain-seed0')
sur = robustness.restore_classifier(R + 'surrogate_a_plain-seed100')
ds = data_lib.load_dataset(target.config.data)
n = 2000
x = data_lib.to_float(jnp.asarray(ds.test.images[:n])); y = jnp.asarray(ds.test.labels[:n])
slog = functools.partial(sur.apply_fn, sur.variables); tlog = functools.partial(target.apply_fn, target.variables)
acc = lambda f, v: float(jnp.mean(jnp.argmax(f(v), -1) == y)) * 100
fg = G.fgsm(slog, x, y, eps=0.3)
print(f'FGSM from A: surrogate {acc(slog, fg):.2f} target {acc(tlog, fg):.2f}')
fgt = G.fgsm(tlog, x, y, eps=0.3)
print(f'FGSM white-box on target {acc(tlog, fgt):.2f}; its examples on A {acc(slog, fgt):.2f}')
agree = float(jnp.mean(jnp.argmax(slog(x), -1) == jnp.argmax(tlog(x), -1))) * 100
print(f'clean: A {acc(slog, x):.2f} target {acc(tlog, x):.2f} agreement {agree:.2f}')
