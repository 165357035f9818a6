"""Adversarial-training baselines (SPEC section 5): which attack makes the training examples."""

import functools
from typing import Callable, Optional

from l2lda_jax import attacks

# (logits_fn, x, y, key) -> x_adv
Adversary = Callable


def make_adversary(config) -> Optional[Adversary]:
  """The attack used by `config.method`, or None for clean-only ("plain") training."""
  a = config.attack
  if config.method == 'plain':
    return None
  if config.method == 'fgsm':
    return functools.partial(attacks.fgsm, eps=config.eps)
  if config.method == 'pgd':
    return functools.partial(attacks.pgd, eps=config.eps, steps=a.pgd_steps,
                             step_size=a.pgd_step_size, unroll=a.unroll)
  if config.method == 'cw':
    return functools.partial(attacks.cw, eps=config.eps, steps=a.cw_steps,
                             learning_rate=a.cw_learning_rate, unroll=a.unroll)
  raise ValueError(f'config.method: unknown method {config.method!r}')
