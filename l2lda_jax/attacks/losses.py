"""Per-example attack losses on logits, and the objective an attack ascends.

Sign conventions (every function returns one value per example):
  * `cross_entropy(logits, y)`: the untargeted attacker maximises it.
  * `margin(logits, y)`: the untargeted attacker minimises it (CW, SPEC section 6).
  * `targeted_cross_entropy(logits, t)` and `targeted_margin(logits, t)`: the
    targeted attacker minimises them, which pulls the prediction towards class t.
  * `attack_objective(loss, targeted)`: one signed function that the attacker
    always maximises, so FGSM, PGD and MI-FGSM share a single ascent step.
"""

from typing import Callable

import jax
import jax.numpy as jnp
import optax

LossFn = Callable[[jax.Array, jax.Array], jax.Array]
LOSSES = ('ce', 'margin')


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Per-example softmax cross-entropy with integer labels."""
  return optax.softmax_cross_entropy_with_integer_labels(logits, labels)


def _label_and_best_other(logits: jax.Array, labels: jax.Array):
  """(Z_label, max_{j != label} Z_j) per example."""
  one_hot = jax.nn.one_hot(labels, logits.shape[-1], dtype=logits.dtype)
  label_logit = jnp.sum(logits * one_hot, axis=-1)
  other_best = jnp.max(jnp.where(one_hot > 0, -jnp.inf, logits), axis=-1)
  return label_logit, other_best


def margin(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Carlini-Wagner margin max(Z_y - max_{j != y} Z_j, 0) per example (SPEC section 6).

  Positive while the example is classified correctly, zero once it is not; the
  attacker minimises it.
  """
  true_logit, other_best = _label_and_best_other(logits, labels)
  return jnp.maximum(true_logit - other_best, 0.0)


def targeted_cross_entropy(logits: jax.Array, targets: jax.Array) -> jax.Array:
  """Cross-entropy towards the target class; the targeted attacker minimises it."""
  return cross_entropy(logits, targets)


def targeted_margin(logits: jax.Array, targets: jax.Array) -> jax.Array:
  """Targeted CW margin max(max_{j != t} Z_j - Z_t, 0) (Carlini & Wagner 2017, f_6 with kappa=0).

  Positive until the target class t has the largest logit, zero once it has; the
  attacker minimises it.
  """
  target_logit, other_best = _label_and_best_other(logits, targets)
  return jnp.maximum(other_best - target_logit, 0.0)


def _negated(loss_fn: LossFn) -> LossFn:
  return lambda logits, labels: -loss_fn(logits, labels)


def attack_objective(loss: str = 'ce', targeted: bool = False) -> LossFn:
  """The per-example objective that an attack MAXIMISES, as `fn(logits, labels)`.

  `labels` are the true labels when untargeted, the target classes when targeted:
    'ce',     untargeted:  CE(Z, y)               (raise the loss of the true class)
    'ce',     targeted:   -CE(Z, t)               (descend the loss towards t)
    'margin', untargeted: -margin(Z, y)           (0 once misclassified)
    'margin', targeted:   -targeted_margin(Z, t)  (0 once t wins)
  Untargeted CE returns `cross_entropy` itself, so the training-time attacks
  trace exactly the computation they always did.
  """
  if loss == 'ce':
    return _negated(targeted_cross_entropy) if targeted else cross_entropy
  if loss == 'margin':
    return _negated(targeted_margin) if targeted else _negated(margin)
  raise ValueError(f'attack loss: unknown {loss!r} (one of {LOSSES})')
