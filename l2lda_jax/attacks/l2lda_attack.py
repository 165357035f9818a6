"""The L2L-DA (or L2L*) generator as an evaluation attack (SPEC section 6, paper Table 2).

The game's generator, fine-tuned against a frozen classifier (`finetune_generator`), then
run with K z draws per image (`generator_attack_examples`): an image is broken if any draw
breaks it. The game itself (training both networks) stays in l2lda_jax.l2lda; this module
only reuses its generator objective.
"""

import functools

import jax
import jax.numpy as jnp
import optax

from l2lda_jax.attacks import learned
from l2lda_jax.l2lda import (GameSettings, GeneratorState, draw_latents, generator_fn_for,
                             generator_objective)

def make_finetune_step(generator, gen_tx, settings: GameSettings, logits_fn):
  """A jitted step of generator-only training against a frozen classifier (Table 2 attack)."""

  def step(gen: GeneratorState, x, labels, key):
    z_key, start_key = jax.random.split(key)
    z = draw_latents(z_key, x.shape[0], settings)
    x_rep = jnp.tile(x, (settings.draws, 1, 1, 1))
    y_rep = jnp.tile(labels, settings.draws)
    objective = functools.partial(generator_objective, generator=generator,
                                  logits_fn=logits_fn, x=x_rep, labels=y_rep, z=z,
                                  settings=settings, start_key=start_key)
    (value, (_, stats, _)), grads = jax.value_and_grad(objective, has_aux=True)(
        gen.params, gen.batch_stats)
    updates, opt_state = gen_tx.update(jax.tree_util.tree_map(jnp.negative, grads),
                                       gen.opt_state, gen.params)
    return GeneratorState(optax.apply_updates(gen.params, updates), stats, opt_state), value

  return jax.jit(step)


def finetune_generator(gen: GeneratorState, *, generator, gen_tx, settings: GameSettings,
                       logits_fn, images, labels, steps: int, batch_size: int, key,
                       log=None, log_every: int = 100):
  """N steps of generator training with the classifier fixed.

  `images` are float images in [0, 1] (the training split); batches are drawn with
  replacement from `key`. `log(step, objective)`, if given, is called every `log_every`
  steps (each call waits for the device). Returns the fine-tuned GeneratorState and the
  last objective.
  """
  step = make_finetune_step(generator, gen_tx, settings, logits_fn)
  value = jnp.nan
  for i in range(steps):
    batch_key, z_key = jax.random.split(jax.random.fold_in(key, i))
    idx = jax.random.randint(batch_key, (batch_size,), 0, images.shape[0])
    gen, value = step(gen, images[idx], labels[idx], z_key)
    if log is not None and (i + 1) % log_every == 0:
      log(i + 1, float(value))
  return gen, value


def generator_attack_examples(gen: GeneratorState, *, generator, settings: GameSettings,
                              logits_fn, x, labels, key, draws: int = 10) -> jax.Array:
  """x_adv_T for each of K z draws, shape (K,) + x.shape.

  The generator normalises with batch statistics, as it did in training; the stored
  statistics are not updated.
  """
  generator_fn = generator_fn_for(generator, gen.params)
  z_dim = max(settings.z_dim, 1)

  def one_draw(draw_key):
    z_key, start_key = jax.random.split(draw_key)
    z = jax.random.normal(z_key, (x.shape[0], z_dim))[:, :settings.z_dim]
    x_advs, _, _ = learned.recursive_attack(generator_fn, logits_fn, x, labels, z,
                                            gen.batch_stats, settings.options, key=start_key)
    return x_advs[-1]

  return jax.lax.map(one_draw, jax.random.split(key, draws))


def generator_attack_correct(gen: GeneratorState, *, generator, settings: GameSettings,
                             logits_fn, x, labels, key, draws: int = 10) -> jax.Array:
  """Per-example correctness under K z draws of the generator (broken if any draw breaks it)."""
  x_advs = generator_attack_examples(gen, generator=generator, settings=settings,
                                     logits_fn=logits_fn, x=x, labels=labels, key=key,
                                     draws=draws)
  correct = jax.lax.map(lambda x_adv: jnp.argmax(logits_fn(x_adv), -1) == labels, x_advs)
  return jnp.all(correct, axis=0)
