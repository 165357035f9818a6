"""Gradient attacks used both for adversarial training and for evaluation.

Every function maps `(logits_fn, x, y, key)` to adversarial images inside the
eps-ball around x and inside [0, 1], stop-gradiented.
"""

from typing import Callable

import jax
import jax.numpy as jnp
import optax

from l2lda_jax.attacks.losses import cross_entropy, margin
from l2lda_jax.attacks.projection import project_linf, random_start

LogitsFn = Callable[[jax.Array], jax.Array]


def _summed_loss_grad(loss_fn, logits_fn: LogitsFn, y: jax.Array):
  """Gradient of the batch-summed per-example loss: each example gets its own gradient."""
  return jax.grad(lambda x_adv: jnp.sum(loss_fn(logits_fn(x_adv), y)))


def fgsm(logits_fn: LogitsFn, x: jax.Array, y: jax.Array, key: jax.Array | None = None,
         *, eps: float) -> jax.Array:
  """FGSM (Goodfellow et al. 2015): one signed step of size eps from x."""
  del key  # deterministic
  grad = _summed_loss_grad(cross_entropy, logits_fn, y)(x)
  return jax.lax.stop_gradient(project_linf(x + eps * jnp.sign(grad), x, eps))


def pgd(logits_fn: LogitsFn, x: jax.Array, y: jax.Array, key: jax.Array, *,
        eps: float, steps: int, step_size: float, random_init: bool = True,
        unroll: bool | int = 1) -> jax.Array:
  """PGD-k (Madry et al. 2018): signed CE-ascent steps, projected after each step."""
  grad_fn = _summed_loss_grad(cross_entropy, logits_fn, y)
  x_adv = random_start(key, x, eps) if random_init else x

  def step(_, x_adv):
    x_adv = x_adv + step_size * jnp.sign(grad_fn(x_adv))
    return project_linf(x_adv, x, eps)

  x_adv = jax.lax.fori_loop(0, steps, step, x_adv, unroll=unroll)
  return jax.lax.stop_gradient(x_adv)


def cw(logits_fn: LogitsFn, x: jax.Array, y: jax.Array, key: jax.Array | None = None,
       *, eps: float, steps: int, learning_rate: float = 1e-3,
       unroll: bool | int = 1) -> jax.Array:
  """CW-k in Linf as the paper uses it (SPEC section 6).

  k Adam steps from delta = 0 minimising the margin loss on logits, projected to
  the eps-ball and [0, 1] after each step.
  """
  del key  # starts from delta = 0
  grad_fn = _summed_loss_grad(margin, logits_fn, y)
  adam = optax.adam(learning_rate)

  def step(_, carry):
    x_adv, opt_state = carry
    updates, opt_state = adam.update(grad_fn(x_adv), opt_state)
    return project_linf(x_adv + updates, x, eps), opt_state

  x_adv, _ = jax.lax.fori_loop(0, steps, step, (x, adam.init(x)), unroll=unroll)
  return jax.lax.stop_gradient(x_adv)
