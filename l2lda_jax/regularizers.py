"""Penalties added to the classifier's loss, beside the paper's cross-entropy.

GradAlign (Andriushchenko and Flammarion, NeurIPS 2020, eq. 6) penalises an input gradient
that turns within the eps-ball: 1 - cos(grad_x CE(x), grad_x CE(x + eta)), eta ~ U(-eps, eps).
A classifier trained against a gradient-fed attacker (PGD, or the L2L-DA generator, which
reads grad_x at every step) gains from a loss surface whose gradients mislead it; Square,
which reads only the outputs, is not misled (docs/RESULTS.md, the fifth round). The penalty
takes that gain away: where gradients stay aligned, the attacker's first-order view holds.
"""

from typing import Callable

import jax
import jax.numpy as jnp

from l2lda_jax.attacks.losses import cross_entropy


def input_gradient(logits_fn: Callable, x: jax.Array, labels: jax.Array) -> jax.Array:
  """grad_x of the summed CE, per example (the sum keeps each row's gradient its own)."""
  return jax.grad(lambda v: jnp.sum(cross_entropy(logits_fn(v), labels)))(x)


def safe_norm(a: jax.Array, floor: float = 1e-15) -> jax.Array:
  """||a_i|| per row, at least `floor`, with a finite derivative at a_i = 0 (jnp.linalg.norm's
  is NaN there, and a confident classifier's CE gradient is exactly 0 in float32)."""
  return jnp.sqrt(jnp.sum(a * a, axis=1) + floor ** 2)


def cosine_per_example(a: jax.Array, b: jax.Array) -> jax.Array:
  """cos(a_i, b_i) over each example's flattened features; 0 where either is all zero."""
  a, b = a.reshape(a.shape[0], -1), b.reshape(b.shape[0], -1)
  # Each normalised apart: the product of two floored norms, squared in the derivative,
  # would underflow to 0 in float32 and give 0 / 0.
  return jnp.sum((a / safe_norm(a)[:, None]) * (b / safe_norm(b)[:, None]), axis=1)


def gradient_misalignment(logits_fn: Callable, x: jax.Array, labels: jax.Array, eps: float,
                          key: jax.Array) -> jax.Array:
  """GradAlign's penalty (eq. 6): mean over examples of 1 - cos(grad_x CE at x, at x + eta),
  eta ~ U(-eps, eps), x + eta clipped to [0, 1]. Differentiable in whatever `logits_fn`
  closes over (the parameters): the update takes the gradient of a gradient."""
  eta = jax.random.uniform(key, x.shape, x.dtype, -eps, eps)
  near = jnp.clip(x + eta, 0.0, 1.0)
  at_x = input_gradient(logits_fn, x, labels)
  at_near = input_gradient(logits_fn, near, labels)
  return jnp.mean(1.0 - cosine_per_example(at_x, at_near))


def grad_align_penalty(weight: float, model, batch_stats, x: jax.Array, labels: jax.Array,
                       eps: float, key: jax.Array):
  """params -> weight x `gradient_misalignment` on the clean images x, the classifier with
  its running BN statistics (as its attackers see it); None when weight is 0."""
  if weight <= 0:
    return None

  def penalty(params):
    variables = {'params': params, 'batch_stats': batch_stats}
    logits_fn = lambda v: model.apply(variables, v, train=False)
    return weight * gradient_misalignment(logits_fn, x, labels, eps, key)

  return penalty
