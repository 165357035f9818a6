"""Accuracy of a classifier, clean or under an attack, over a whole split."""

from typing import Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from l2lda_jax import data as data_lib
from l2lda_jax import sharding

# (variables, images in [0,1]) -> logits, inference mode
ApplyFn = Callable
Attack = Callable  # (logits_fn, x, y, key) -> x_adv


def attack_and_classify(apply_fn: ApplyFn, attack: Optional[Attack], variables, images,
                        labels, key, **attack_kwargs):
  """(x, x_adv, per-example correctness on x_adv) of uint8 `images`; x_adv is x when
  `attack` is None. Traceable: the body of every evaluation's jitted batch function."""
  x = data_lib.to_float(images)
  logits_fn = lambda v: apply_fn(variables, v)
  x_adv = x if attack is None else attack(logits_fn, x, labels, key, **attack_kwargs)
  return x, x_adv, jnp.argmax(logits_fn(x_adv), axis=-1) == labels


def make_correct_fn(apply_fn: ApplyFn, attack: Optional[Attack]):
  """A jitted fn (variables, uint8 images, labels, key, **attack_kwargs) -> per-example
  correctness. Keyword arguments go to the attack traced, not as constants, so one
  compilation serves every value (validation's PGD at three radii)."""

  def correct(variables, images, labels, key, **attack_kwargs):
    return attack_and_classify(apply_fn, attack, variables, images, labels, key,
                               **attack_kwargs)[2]

  return jax.jit(correct)


def padded_rows(batch_size: int, mesh) -> int:
  """`batch_size` rounded up to a multiple of the mesh's devices, over which a batch must
  split evenly (evaluate.py's default batch of 500 on 8 GPUs: 504). The padding repeats
  the last image; the rows before it draw the same random numbers as unpadded (JAX's
  default, partitionable threefry, draws by index), so their results do not change."""
  return -(-batch_size // mesh.size) * mesh.size


def map_batches(batch_fn, variables, split: data_lib.Split, batch_size: int, key: jax.Array,
                mesh, desc: str = '', progress: bool = False) -> list[np.ndarray]:
  """`batch_fn(variables, uint8 images, labels, key)` over `split` in fixed-size batches.

  Every batch is padded to `padded_rows` (one shape: one compilation) and its padding
  dropped; batch `start` gets fold_in(key, start). Returns per-example numpy arrays, one
  per output.
  """
  outputs = []
  rows = padded_rows(batch_size, mesh)
  starts = range(0, len(split), batch_size)
  for start in tqdm(starts, desc=desc, disable=not progress, leave=False):
    images = split.images[start:start + batch_size]
    labels = split.labels[start:start + batch_size]
    n = len(labels)
    if n < rows:
      images = np.concatenate([images, np.repeat(images[-1:], rows - n, 0)])
      labels = np.concatenate([labels, np.repeat(labels[-1:], rows - n, 0)])
    batch = sharding.shard_batch(mesh, images, labels)
    out = batch_fn(variables, *batch, jax.random.fold_in(key, start))
    out = out if isinstance(out, tuple) else (out,)
    outputs.append([sharding.to_host(o)[:n] for o in out])  # all rows, every process
  return [np.concatenate(parts) for parts in zip(*outputs)]


def per_example_correct(correct_fn, variables, split: data_lib.Split, batch_size: int,
                        key: jax.Array, mesh) -> np.ndarray:
  """Runs `correct_fn` over `split` (see map_batches)."""
  return map_batches(correct_fn, variables, split, batch_size, key, mesh)[0]
