"""The recursive stochastic attack of L2L-DA (paper Eq. 5, SPEC section 1) and L2L* (Chen et al.).

A generator is passed in as `generator_fn(inputs, z, labels, batch_stats) ->
(direction, new_batch_stats)`, so this module knows nothing of Flax or training.
"""

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

from l2lda_jax.attacks.losses import cross_entropy

# The authors' stabiliser, added to g inside the norm (SPEC section 1): ||g + 1e-15||_2.
# g is the gradient of a batch-mean loss, so an example's gradient is scaled by
# 1/batch; any constant much larger than this would shrink gn for confident examples.
GRAD_NORM_EPS = 1e-15


class UnrollOptions(NamedTuple):
  """Static switches of the attack (the ablations of paper Table 1)."""
  eps: float
  steps: int = 10             # T; 1 with use_delta=False is one-shot
  step_size: float = 0.075    # eps/4 in the paper
  use_delta: bool = True      # feed delta_t to the generator
  random_start: bool = False  # delta_0 ~ U(-eps, eps) instead of SPEC's 0 (a recipe knob)
  normalize_grad: str = 'channel'  # 'channel' (L2 per sample+channel), 'batch_max' (L2L*), 'none'
  unroll: bool | int = True


def normalize_gradient(grad: jax.Array, mode: str) -> jax.Array:
  """gn = g / ||g + 1e-15||_2 per sample and channel over H x W (SPEC section 1, code),
  or L2L*'s batch max-abs.

  Any gradient above ~1e-13 normalises to unit norm per channel; an exactly zero one
  stays zero (the stabiliser keeps the norm positive).
  """
  if mode == 'channel':
    shifted = grad + GRAD_NORM_EPS
    norm = jnp.sqrt(jnp.sum(shifted * shifted, axis=(1, 2), keepdims=True))
    return grad / norm
  if mode == 'batch_max':
    return grad / (jnp.max(jnp.abs(grad)) + GRAD_NORM_EPS)
  if mode == 'none':
    return grad
  raise ValueError(f'normalize_grad: unknown mode {mode!r} (channel, batch_max, none)')


def input_gradient(logits_fn: Callable, x_adv: jax.Array, labels: jax.Array) -> jax.Array:
  """d CE_mean(f(x_adv), y) / d x_adv, stop-gradiented: no second-order terms (code)."""
  grad = jax.grad(lambda v: jnp.mean(cross_entropy(logits_fn(v), labels)))(x_adv)
  return jax.lax.stop_gradient(grad)


def reach(options: UnrollOptions) -> float:
  """How far the attack can move a pixel before the eps clip: T * eps_step (SPEC section 1).

  Below eps the generator never reaches the boundary of the ball it is tested on.
  """
  return options.steps * options.step_size


def channel_norm_mean(gn: jax.Array) -> jax.Array:
  """The mean over samples and channels of ||gn||_2 over H x W (1 when normalised)."""
  return jnp.mean(jnp.sqrt(jnp.sum(gn * gn, axis=(1, 2))))


def attack_cell(generator_fn, logits_fn, x, labels, z, delta, batch_stats,
                options: UnrollOptions):
  """One step of Eq. 5: delta_{t+1} = Proj_S(delta_t + eps_step * tanh(G(x, gn_t, delta_t; z, y))).

  Returns (delta_{t+1}, x_adv_{t+1}, batch_stats, mean per-channel norm of gn_t). delta
  is not stop-gradiented, so the generator loss backpropagates through the whole chain.
  """
  x_adv = jnp.clip(x + delta, 0.0, 1.0)
  gn = normalize_gradient(input_gradient(logits_fn, x_adv, labels), options.normalize_grad)
  parts = [x, gn, delta] if options.use_delta else [x, gn]
  direction, batch_stats = generator_fn(jnp.concatenate(parts, axis=-1), z, labels, batch_stats)
  delta = jnp.clip(delta + options.step_size * jnp.tanh(direction), -options.eps, options.eps)
  return delta, jnp.clip(x + delta, 0.0, 1.0), batch_stats, channel_norm_mean(gn)


def initial_delta(x: jax.Array, options: UnrollOptions, key: jax.Array | None) -> jax.Array:
  """delta_0: 0 as in SPEC section 1, or with `random_start` uniform in the eps-ball, as
  PGD starts: then the first gradient the generator sees is taken off the clean point, where
  a classifier trained against attacks that all start at x can learn to flatten its loss.

  Every row gets its own start, the two z copies of the game's [x; x] included (one start
  shared by both copies did worse in the study of docs/RESULTS.md).
  """
  if not options.random_start:
    return jnp.zeros_like(x)
  if key is None:
    raise ValueError('recursive_attack: random_start needs a key')
  return jax.random.uniform(key, x.shape, x.dtype, -options.eps, options.eps)


def recursive_attack(generator_fn, logits_fn, x, labels, z, batch_stats,
                     options: UnrollOptions, key: jax.Array | None = None):
  """T cells in one lax.scan from delta_0 (`initial_delta`; `key` draws it when
  options.random_start), z held fixed over the T steps.

  Returns (x_adv of every step, shape [T, N, H, W, C], final batch_stats, the mean
  per-channel norm of gn at every step, shape [T]).
  """

  def step(carry, _):
    delta, stats = carry
    delta, x_adv, stats, gn_norm = attack_cell(generator_fn, logits_fn, x, labels, z, delta,
                                               stats, options)
    return (delta, stats), (x_adv, gn_norm)

  (_, batch_stats), (x_advs, gn_norms) = jax.lax.scan(
      step, (initial_delta(x, options, key), batch_stats), None, length=options.steps,
      unroll=options.unroll)
  return x_advs, batch_stats, gn_norms


def diversity_loss(x_adv: jax.Array, z: jax.Array) -> jax.Array:
  """L_div (SPEC section 1) on a doubled batch [x; x] with latents [z1; z2].

  mean_b [ mean_{c,h,w} |x_adv[b] - x_adv[b+B]| / (mean_k |z[b] - z[b+B]| + 1e-8) ].
  """
  half = x_adv.shape[0] // 2
  image_distance = jnp.mean(jnp.abs(x_adv[:half] - x_adv[half:]), axis=(1, 2, 3))
  latent_distance = jnp.mean(jnp.abs(z[:half] - z[half:]), axis=-1)
  return jnp.mean(image_distance / (latent_distance + 1e-8))
