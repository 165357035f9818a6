"""Gradient attacks used both for adversarial training and for evaluation.

Every function maps `(logits_fn, x, y, key)` to adversarial images inside the
eps-ball around x and inside [0, 1], stop-gradiented. Step counts are static
ints (`lax.fori_loop`, optionally unrolled); each example gets its own gradient
from the batch-summed loss.

Evaluation options are keyword-only and off by default, so the attacks used in
training trace exactly the computation they always did:
  * `loss` ('ce' | 'margin') and `targets` (None, or target classes): the
    objective that is ascended, see `losses.attack_objective`;
  * `best_iterate`: return, per example, the best iterate seen, not the last;
  * `restarts` (PGD): independent random starts; restart 0 uses `key` itself.

Best-iterate rule (per example): a misclassified iterate (argmax != y, the TRUE
label, also for targeted attacks, since robust accuracy is what is measured)
beats a correctly classified one; among misclassified iterates the first one
is kept; among correct ones, the one with the strictly highest attack
objective. Plain PGD with key k returns one of the candidates of restart 0, so
restarts and best-iterate never break fewer examples.
"""

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax

from l2lda_jax.attacks.losses import LossFn, attack_objective, margin, targeted_margin
from l2lda_jax.attacks.projection import project_linf, random_start

LogitsFn = Callable[[jax.Array], jax.Array]
# (x_adv, input gradient, state) -> (next x_adv, next state)
Update = Callable[[jax.Array, jax.Array, Any], tuple[jax.Array, Any]]
L1_FLOOR = 1e-12


def _summed_loss_grad(loss_fn, logits_fn: LogitsFn, y: jax.Array):
  """Gradient of the batch-summed per-example loss: each example gets its own gradient."""
  return jax.grad(lambda x_adv: jnp.sum(loss_fn(logits_fn(x_adv), y)))


def _objective(loss: str, y: jax.Array, targets: jax.Array | None):
  """(objective to ascend, the labels it takes): y when untargeted, targets when targeted."""
  targeted = targets is not None
  return attack_objective(loss, targeted), (targets if targeted else y)


# ----------------------------------------------------------------------------- best iterate
class Best(NamedTuple):
  """Per-example best iterate so far (see the module docstring for the rule)."""
  x: jax.Array
  score: jax.Array   # attack objective, higher is stronger; float32
  fooled: jax.Array  # bool, argmax != y


def no_best(x: jax.Array) -> Best:
  """The empty record: any finite candidate replaces it."""
  n = x.shape[0]
  return Best(x, jnp.full((n,), -jnp.inf, jnp.float32), jnp.zeros((n,), bool))


def keep_better(best: Best, x_adv: jax.Array, score: jax.Array, fooled: jax.Array) -> Best:
  """Per example: take x_adv if it is the first misclassified one, or if neither is
  misclassified and its score is strictly higher (ties keep the earlier iterate)."""
  score = score.astype(best.score.dtype)
  take = (fooled & ~best.fooled) | (~fooled & ~best.fooled & (score > best.score))
  take_x = take.reshape(take.shape + (1,) * (x_adv.ndim - 1))
  return Best(jnp.where(take_x, x_adv, best.x), jnp.where(take, score, best.score),
              best.fooled | fooled)


def _offer(best, loss_fn, logits_fn, labels, y, score_sign, x_adv, values=None, logits=None):
  """keep_better with x_adv's score and correctness (one forward pass unless given)."""
  if logits is None:
    logits = logits_fn(x_adv)
    values = loss_fn(logits, labels)
  return keep_better(best, x_adv, score_sign * values, jnp.argmax(logits, -1) != y)


# ----------------------------------------------------------------------------- iteration
def _iterate(loss_fn, logits_fn, labels, update: Update, x_adv, state, *, steps, unroll):
  """`steps` times x_adv, state <- update(x_adv, grad, state); returns the last x_adv."""
  grad_fn = _summed_loss_grad(loss_fn, logits_fn, labels)

  def body(_, carry):
    x_adv, state = carry
    return update(x_adv, grad_fn(x_adv), state)

  x_adv, _ = jax.lax.fori_loop(0, steps, body, (x_adv, state), unroll=unroll)
  return x_adv


def _iterate_tracked(loss_fn, logits_fn, labels, y, update: Update, x_adv, state, best: Best,
                     *, steps, unroll, score_sign=1.0) -> Best:
  """As `_iterate`, but offers every iterate x_0 .. x_steps to `best`.

  The score of x_t comes with its gradient (value_and_grad), so tracking costs
  one extra forward pass, for the last iterate. score = score_sign * loss.
  """
  def total(v):
    logits = logits_fn(v)
    values = loss_fn(logits, labels)
    return jnp.sum(values), (values, logits)

  value_and_grad = jax.value_and_grad(total, has_aux=True)

  def body(_, carry):
    x_adv, state, best = carry
    (_, (values, logits)), grad = value_and_grad(x_adv)
    best = _offer(best, loss_fn, logits_fn, labels, y, score_sign, x_adv, values, logits)
    x_adv, state = update(x_adv, grad, state)
    return x_adv, state, best

  x_adv, _, best = jax.lax.fori_loop(0, steps, body, (x_adv, state, best), unroll=unroll)
  return _offer(best, loss_fn, logits_fn, labels, y, score_sign, x_adv)


def _signed_ascent(x, eps, step_size) -> Update:
  """x_adv <- Proj(x_adv + step_size * sign(grad)) (the PGD step of Madry et al. 2018)."""
  def update(x_adv, grad, state):
    x_adv = x_adv + step_size * jnp.sign(grad)
    return project_linf(x_adv, x, eps), state
  return update


def restart_keys(key: jax.Array, restarts: int) -> jax.Array:
  """Keys of `restarts` random starts: `key` itself first, then fold_in(key, i).

  Restart 0 is therefore exactly `pgd(..., key)` without restarts.
  """
  return jnp.stack([key] + [jax.random.fold_in(key, i) for i in range(1, restarts)])


# ----------------------------------------------------------------------------- attacks
def fgsm(logits_fn: LogitsFn, x: jax.Array, y: jax.Array, key: jax.Array | None = None,
         *, eps: float, loss: str = 'ce', targets: jax.Array | None = None) -> jax.Array:
  """FGSM (Goodfellow et al. 2015): one signed step of size eps from x (SPEC section 6).

  Ascends `attack_objective(loss, targeted)`: untargeted raises the loss of y,
  targeted descends the loss towards `targets`.
  """
  del key  # deterministic
  objective, labels = _objective(loss, y, targets)
  grad = _summed_loss_grad(objective, logits_fn, labels)(x)
  return jax.lax.stop_gradient(project_linf(x + eps * jnp.sign(grad), x, eps))


def pgd(logits_fn: LogitsFn, x: jax.Array, y: jax.Array, key: jax.Array | None, *,
        eps: float, steps: int, step_size: float, random_init: bool = True,
        unroll: bool | int = 1, loss: str = 'ce', targets: jax.Array | None = None,
        restarts: int = 1, best_iterate: bool = False) -> jax.Array:
  """PGD-k (Madry et al. 2018): signed ascent steps on the attack objective, projected
  to the eps-ball and [0, 1] after each step, from a uniform random start (SPEC section 6).

  With the defaults this is the training-time attack, with no bookkeeping.
  `restarts` > 1 runs independent random starts (restart 0 with `key`, restart i
  with fold_in(key, i)) and keeps per example the best final iterate, or with
  `best_iterate` the best of all iterates of all restarts (module docstring rule).
  """
  objective, labels = _objective(loss, y, targets)
  update = _signed_ascent(x, eps, step_size)
  run = lambda x_start, state: _iterate(objective, logits_fn, labels, update, x_start, state,
                                        steps=steps, unroll=unroll)
  if restarts == 1 and not best_iterate:
    x_adv = random_start(key, x, eps) if random_init else x
    return jax.lax.stop_gradient(run(x_adv, None))
  if restarts < 1:
    raise ValueError(f'pgd: restarts must be >= 1, got {restarts}')
  if restarts > 1 and not random_init:
    raise ValueError('pgd: restarts > 1 without random_init would repeat one run')
  keys = restart_keys(key, restarts) if random_init else None

  def restart(i, best):
    x_start = random_start(keys[i], x, eps) if random_init else x
    if best_iterate:
      return _iterate_tracked(objective, logits_fn, labels, y, update, x_start, None, best,
                              steps=steps, unroll=unroll)
    return _offer(best, objective, logits_fn, labels, y, 1.0, run(x_start, None))

  best = jax.lax.fori_loop(0, restarts, restart, no_best(x))
  return jax.lax.stop_gradient(best.x)


def mi_fgsm(logits_fn: LogitsFn, x: jax.Array, y: jax.Array, key: jax.Array | None = None,
            *, eps: float, steps: int = 10, step_size: float | None = None,
            decay: float = 1.0, loss: str = 'ce', targets: jax.Array | None = None,
            best_iterate: bool = False, unroll: bool | int = 1) -> jax.Array:
  """MI-FGSM (Dong et al., CVPR 2018, Algorithm 1), from delta = 0:

    g_{t+1} = mu * g_t + grad_t / ||grad_t||_1   (L1 norm per example, Eq. 6)
    x_{t+1} = Proj(x_t + alpha * sign(g_{t+1})),  alpha = eps / steps by default.

  `decay` is mu. The objective and `best_iterate` work as in `pgd`.
  """
  del key  # deterministic: no random start
  objective, labels = _objective(loss, y, targets)
  alpha = eps / steps if step_size is None else step_size
  reduce_axes = tuple(range(1, x.ndim))

  def update(x_adv, grad, g):
    l1 = jnp.sum(jnp.abs(grad), axis=reduce_axes, keepdims=True)
    g = decay * g + grad / jnp.maximum(l1, L1_FLOOR)  # floor: a zero gradient stays zero
    return project_linf(x_adv + alpha * jnp.sign(g), x, eps), g

  g0 = jnp.zeros_like(x)
  if not best_iterate:
    x_adv = _iterate(objective, logits_fn, labels, update, x, g0, steps=steps, unroll=unroll)
    return jax.lax.stop_gradient(x_adv)
  best = _iterate_tracked(objective, logits_fn, labels, y, update, x, g0, no_best(x),
                          steps=steps, unroll=unroll)
  return jax.lax.stop_gradient(best.x)


def cw(logits_fn: LogitsFn, x: jax.Array, y: jax.Array, key: jax.Array | None = None,
       *, eps: float, steps: int, learning_rate: float = 1e-3,
       unroll: bool | int = 1, targets: jax.Array | None = None,
       best_iterate: bool = False) -> jax.Array:
  """CW-k in Linf as the paper uses it (SPEC section 6).

  k Adam steps from delta = 0 minimising the margin loss on logits (the targeted
  margin when `targets` is given), projected to the eps-ball and [0, 1] after
  each step. Adam's momentum can carry an iterate past a misclassification and
  back, so `best_iterate` (for evaluation) keeps per example the first
  misclassified iterate, else the one with the lowest margin.
  """
  del key  # starts from delta = 0
  loss_fn: LossFn = margin if targets is None else targeted_margin
  labels = y if targets is None else targets
  adam = optax.adam(learning_rate)

  def update(x_adv, grad, opt_state):
    updates, opt_state = adam.update(grad, opt_state)
    return project_linf(x_adv + updates, x, eps), opt_state

  if not best_iterate:
    x_adv = _iterate(loss_fn, logits_fn, labels, update, x, adam.init(x), steps=steps,
                     unroll=unroll)
    return jax.lax.stop_gradient(x_adv)
  # The attacker minimises the margin, so the score is its negation.
  best = _iterate_tracked(loss_fn, logits_fn, labels, y, update, x, adam.init(x), no_best(x),
                          steps=steps, unroll=unroll, score_sign=-1.0)
  return jax.lax.stop_gradient(best.x)
