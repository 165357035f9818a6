"""Accuracy of a classifier, clean or under an attack, over a whole split."""

from typing import Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np

from l2lda_jax import data as data_lib
from l2lda_jax import sharding

# (variables, images in [0,1]) -> logits, inference mode
ApplyFn = Callable
Attack = Callable  # (logits_fn, x, y, key) -> x_adv


def make_correct_fn(apply_fn: ApplyFn, attack: Optional[Attack]):
  """A jitted fn (variables, uint8 images, labels, key) -> per-example correctness."""

  def correct(variables, images, labels, key):
    x = data_lib.to_float(images)
    logits_fn = lambda v: apply_fn(variables, v)
    if attack is not None:
      x = attack(logits_fn, x, labels, key)
    return jnp.argmax(logits_fn(x), axis=-1) == labels

  return jax.jit(correct)


def per_example_correct(correct_fn, variables, split: data_lib.Split, batch_size: int,
                        key: jax.Array, mesh) -> np.ndarray:
  """Runs `correct_fn` over `split` in fixed-size batches (the last one padded)."""
  results = []
  for start in range(0, len(split), batch_size):
    images = split.images[start:start + batch_size]
    labels = split.labels[start:start + batch_size]
    n = len(labels)
    if n < batch_size:  # pad so every batch has one shape: one compilation
      images = np.concatenate([images, np.repeat(images[-1:], batch_size - n, 0)])
      labels = np.concatenate([labels, np.repeat(labels[-1:], batch_size - n, 0)])
    batch = sharding.shard_batch(mesh, images, labels)
    out = correct_fn(variables, *batch, jax.random.fold_in(key, start))
    results.append(np.asarray(out)[:n])
  return np.concatenate(results)
