"""The L2L-DA (or L2L*) generator as an evaluation attack (SPEC section 6, paper Table 2).

The game's generator, fine-tuned against a frozen classifier (`train_learned_attack`, built
on `finetune_generator`), then run with K z draws per image: an image is broken if any draw
breaks it. The trained `LearnedAttack` is called like every other attack,
`attack(logits_fn, x, y, key) -> x_adv`. The game itself (training both networks) stays in
l2lda_jax.l2lda; this module only reuses its generator and objective.
"""

import dataclasses
import functools
import time
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import serialization

from l2lda_jax import l2lda
from l2lda_jax.attacks import learned
from l2lda_jax.json_files import replaced_whole
from l2lda_jax.l2lda import (GameSettings, GeneratorState, draw_latents, generator_fn_for,
                             generator_objective)

# The attack's generator step, as a fraction of eps (SPEC section 6: T = 10 of eps/4).
L2LDA_ATTACK_STEP = 0.25

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


def first_breaking_draw(x_advs: jax.Array, correct: jax.Array) -> jax.Array:
  """x_advs [K, N, ...], correct [K, N] -> [N, ...]: per example the first draw that breaks
  it, else draw 0. Correct under it exactly when correct under every draw."""
  index = jnp.where(jnp.any(~correct, axis=0), jnp.argmax(~correct, axis=0), 0)
  return jnp.take_along_axis(x_advs, index[None, :, None, None, None], axis=0)[0]


@dataclasses.dataclass
class LearnedAttack:
  """A generator trained against a frozen classifier: `attack(logits_fn, x, y, key)` runs
  `draws` z draws (with their random starts when the settings have one) and returns, per
  example, the first one that breaks it."""
  gen: GeneratorState
  generator: object  # the Flax module
  settings: GameSettings
  draws: int = 10

  def __call__(self, logits_fn, x, y, key) -> jax.Array:
    x_advs = generator_attack_examples(self.gen, generator=self.generator,
                                       settings=self.settings, logits_fn=logits_fn, x=x,
                                       labels=y, key=key, draws=self.draws)
    correct = jax.lax.map(lambda x_adv: jnp.argmax(logits_fn(x_adv), -1) == y, x_advs)
    return jax.lax.stop_gradient(first_breaking_draw(x_advs, correct))


def first_breaking_attack(attacks):
  """One attack from several: per example, the output of the first attack that breaks it
  (else the last one's). Attack r gets `key` folded with r, and attack 0 `key` itself, so
  a single attack gives exactly what it gives alone. Restarts of a learned attack: one
  1,000-step training of its generator is a draw from a wide spread (docs/reproduction,
  "The learned attack's spread"), so an image counts as broken if any training breaks it."""
  if len(attacks) == 1:
    return attacks[0]

  def attack(logits_fn, x, y, key):
    x_adv = attacks[0](logits_fn, x, y, key)
    for r, next_attack in enumerate(attacks[1:], start=1):
      unbroken = jnp.argmax(logits_fn(x_adv), -1) == y
      candidate = next_attack(logits_fn, x, y, jax.random.fold_in(key, r))
      x_adv = jnp.where(unbroken[:, None, None, None], candidate, x_adv)
    return x_adv

  return attack


def attack_config(run_config, kind: str, eps: float, unroll_steps: int):
  """The run's config for an l2lda / l2l attack at `eps`, with the attack of SPEC section 6
  whatever the training recipe was: T steps of eps/4 from delta_0 = 0 (a run trained with
  `generator.random_start` is attacked like any other, so rows of different runs compare)."""
  config = run_config.copy_and_resolve_references()
  config.method = kind
  config.eps = eps
  if kind == 'l2lda':
    config.generator.steps = unroll_steps
    config.generator.step_size = eps * L2LDA_ATTACK_STEP
    config.generator.random_start = False
  return config


def load_generator_weights(gen: GeneratorState, raw: Optional[dict]):
  """(gen with the trained generator's params and BN statistics when they fit, loaded?)."""
  if not raw:
    return gen, False
  shapes = lambda tree: jax.tree_util.tree_map(np.shape, tree)
  try:
    same = (shapes(raw['params']) == shapes(gen.params)
            and shapes(raw['batch_stats']) == shapes(gen.batch_stats))
  except (KeyError, TypeError):
    same = False
  if not same:
    return gen, False
  cast = lambda new, old: jnp.asarray(new, old.dtype)
  return gen.replace(params=jax.tree_util.tree_map(cast, raw['params'], gen.params),
                     batch_stats=jax.tree_util.tree_map(cast, raw['batch_stats'],
                                                        gen.batch_stats)), True


def save_generator_weights(gen: GeneratorState, path: str) -> None:
  """The trained generator's params and BN statistics as msgpack, written atomically (a
  temporary file renamed into place), so a reader never sees half a file."""
  data = serialization.msgpack_serialize(jax.device_get(
      {'params': gen.params, 'batch_stats': gen.batch_stats}))
  with replaced_whole(path, 'wb') as f:
    f.write(data)


def read_generator_weights(path: str) -> Optional[dict]:
  """{'params', 'batch_stats'} saved by save_generator_weights, or None if absent or
  unreadable (then the generator is trained again)."""
  try:
    with open(path, 'rb') as f:
      return serialization.msgpack_restore(f.read())
  except (OSError, ValueError, TypeError):
    return None


def train_learned_attack(kind: str, run_config, logits_fn, images: np.ndarray,
                         labels: np.ndarray, *, own_generator: Optional[dict],
                         num_classes: int, eps: float, unroll_steps: int, steps: int,
                         batch_size: int, draws: int, seed: int, key,
                         log=print, cache_path: str = '') -> LearnedAttack:
  """Fine-tunes the run's own generator (`own_generator`, when it has the same method and
  shapes; else a fresh one) against the frozen `logits_fn` on uint8 training `images`,
  never the test set.

  With `cache_path`, a generator saved there is used instead of training one, and one
  trained here is saved there. The caller names the file by everything the training reads
  (robustness.learned_attack_cache_path), so a cached generator is the one this call
  would train: training is deterministic for a key.
  """
  config = attack_config(run_config, kind, eps, unroll_steps)
  settings = l2lda.game_settings(config, num_classes)
  generator = l2lda.make_generator(settings, images.shape[-1])
  gen_tx = l2lda.make_generator_optimizer(config)
  gen = l2lda.init_generator_state(generator, gen_tx, settings, images.shape[1:], seed)
  if cache_path:
    gen, cached = load_generator_weights(gen, read_generator_weights(cache_path))
    if cached:
      log(f'{kind}: using the generator trained earlier, {cache_path}')
      return LearnedAttack(gen, generator, settings, draws)
  gen, loaded = load_generator_weights(gen, own_generator)
  origin = "fine-tuning the run's generator" if loaded else 'training a fresh generator'
  log(f'{kind}: {origin} for {steps} steps against the frozen classifier')
  start = time.time()

  def log_progress(step, objective):  # ten lines per run: this part can take an hour on a CPU
    log(f'{kind}: step {step}/{steps}, objective {objective:.4f}, '
        f'{time.time() - start:.0f} s')

  gen, objective = finetune_generator(
      gen, generator=generator, gen_tx=gen_tx, settings=settings, logits_fn=logits_fn,
      images=jnp.asarray(images, jnp.float32) / 255.0, labels=jnp.asarray(labels),
      steps=steps, batch_size=batch_size, key=key, log=log_progress,
      log_every=max(1, steps // 10))
  log(f'{kind}: generator objective {float(objective):.4f} after {time.time() - start:.0f} s')
  if cache_path:
    save_generator_weights(gen, cache_path)
  return LearnedAttack(gen, generator, settings, draws)
