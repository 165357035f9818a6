"""Per-example attack losses on logits."""

import jax
import jax.numpy as jnp
import optax


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Per-example softmax cross-entropy with integer labels."""
  return optax.softmax_cross_entropy_with_integer_labels(logits, labels)


def margin(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Carlini-Wagner margin max(Z_y - max_{j != y} Z_j, 0) per example (SPEC section 6).

  Positive while the example is classified correctly, zero once it is not; the
  attacker minimises it.
  """
  num_classes = logits.shape[-1]
  one_hot = jax.nn.one_hot(labels, num_classes, dtype=logits.dtype)
  true_logit = jnp.sum(logits * one_hot, axis=-1)
  other_best = jnp.max(jnp.where(one_hot > 0, -jnp.inf, logits), axis=-1)
  return jnp.maximum(true_logit - other_best, 0.0)
