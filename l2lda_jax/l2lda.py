"""The L2L-DA game in one compiled step (paper Algorithm 1, SPEC sections 1, 4, 5).

Per iteration: draw z1, z2; run the recursive attack on the doubled batch [x; x] with
[z1; z2]; update the generator to maximise sum_t [CE_t + lambda * L_div,t]; update the
classifier on [x; x_adv_T(z1); x_adv_T(z2)] made by the pre-update generator (or, with
`generator.classifier_sees = 'worst_draw'`, on [x; the worse of the two per image]). Both
optimisers and both networks' BatchNorm statistics advance in the same jit step.
`method=l2l` is L2L* (Chen et al.): one shot, no delta, no z, no label, batch max-abs
gradient normalisation, x_adv = clip(x + eps * tanh(G(x, g))).
"""

import dataclasses
import functools
from typing import Any, NamedTuple

import flax.struct
import jax
import jax.numpy as jnp
import optax

from l2lda_jax import data as data_lib
from l2lda_jax import optimizers
from l2lda_jax import regularizers
from l2lda_jax.attacks import learned
from l2lda_jax.attacks.losses import cross_entropy
from l2lda_jax.models.generator import Generator, z_live_units


@flax.struct.dataclass
class GeneratorState:
  params: Any
  batch_stats: Any
  opt_state: Any


@dataclasses.dataclass(frozen=True)
class GameSettings:
  """Everything static about the game, derived once from the config."""
  options: learned.UnrollOptions
  diversity_weight: float
  draws: int  # 2: the doubled batch [x; x] with [z1; z2]; 1 for L2L*
  z_dim: int
  num_classes: int  # 0: plain BN (no label input)
  width: int
  generator_updates: int = 1  # generator ascent steps per classifier update
  conv_impl: str = 'auto'  # l2lda_jax.models.convolution
  worst_draw_only: bool = False  # the classifier trains on each image's worst z draw only
  grad_align_weight: float = 0.0  # regularizers.grad_align_penalty on the clean images


def game_settings(config, num_classes: int) -> GameSettings:
  """The L2L-DA settings of config.generator, or the fixed L2L* ones for method=l2l."""
  g = config.generator
  if config.method == 'l2l':
    options = learned.UnrollOptions(eps=config.eps, steps=1, step_size=config.eps,
                                    use_delta=False, normalize_grad='batch_max',
                                    unroll=g.unroll)
    return GameSettings(options, 0.0, 1, 0, 0, g.width, g.updates_per_step,
                        config.get('conv_impl', 'auto'))
  options = learned.UnrollOptions(eps=config.eps, steps=g.steps, step_size=g.step_size,
                                  use_delta=g.use_delta, normalize_grad=g.normalize_grad,
                                  random_start=g.get('random_start', False), unroll=g.unroll)
  return GameSettings(options, g.diversity_weight, 2, g.z_dim,
                      num_classes if g.use_label else 0, g.width, g.updates_per_step,
                      config.get('conv_impl', 'auto'),
                      g.get('classifier_sees', 'all_draws') == 'worst_draw',
                      config.train.get('grad_align_weight', 0.0))


def make_generator(settings: GameSettings, channels: int) -> Generator:
  return Generator(out_channels=channels, num_classes=settings.num_classes,
                   width=settings.width, z_dim=settings.z_dim, conv_impl=settings.conv_impl)


def generator_input_channels(settings: GameSettings, channels: int) -> int:
  return channels * (3 if settings.options.use_delta else 2)


def make_generator_optimizer(config) -> optax.GradientTransformation:
  """The generator's clipped SGD; its learning rate stays constant (SPEC section 4)."""
  g = config.generator
  return optimizers.clipped_sgd(g.learning_rate, g.momentum, g.weight_decay, g.grad_clip_norm)


def init_generator_state(generator, gen_tx, settings, image_shape, seed) -> GeneratorState:
  """A fresh generator state, built by one compiled program (see train.init_train_state)."""
  h, w, c = image_shape

  @jax.jit
  def init(key):
    inputs = jnp.zeros((2, h, w, generator_input_channels(settings, c)))
    variables = generator.init(key, inputs, jnp.zeros((2, settings.z_dim)),
                               jnp.zeros((2,), jnp.int32))
    return GeneratorState(variables['params'], variables['batch_stats'],
                          gen_tx.init(variables['params']))

  return init(jax.random.PRNGKey(seed + 7919))


def generator_fn_for(generator, params, train: bool = True):
  """The `(inputs, z, labels, batch_stats) -> (direction, batch_stats)` closure of `learned`."""

  def generator_fn(inputs, z, labels, batch_stats):
    variables = {'params': params, 'batch_stats': batch_stats}
    if not train:
      return generator.apply(variables, inputs, z, labels, train=False), batch_stats
    out, updates = generator.apply(variables, inputs, z, labels, train=True,
                                   mutable=['batch_stats'])
    return out, updates['batch_stats']

  return generator_fn


def draw_latents(key, batch: int, settings: GameSettings) -> jax.Array:
  """[z1; z2] ~ N(0, I), drawn once per iteration and held over the T steps."""
  return jax.random.normal(key, (settings.draws * batch, settings.z_dim))


class GameTrace(NamedTuple):
  """What one recursive attack did, per step t: what the progress line shows of the game."""
  ce: jax.Array  # [T] CE_mean(f(x_adv_t), y)
  diversity: jax.Array  # [T] L_div,t (zeros for L2L*)
  gn_norm: jax.Array  # [T] mean per-channel ||gn_t||_2 (1 when normalised per channel)


def boundary_share(x, x_adv, eps: float) -> jax.Array:
  """The share of pixels that x_adv moved to the eps boundary (|x_adv - x| >= eps, to float
  precision): 0 means the attack never reached the radius it is tested at."""
  return jnp.mean(jnp.abs(x_adv - x) >= eps * (1 - 1e-5))


def game_metrics(trace: GameTrace, x, x_adv, eps: float) -> dict:
  """The generator's side of the game for the log: CE after each step, the diversity and
  gn norm of the last step, and how much of x_adv_T sits on the eps boundary."""
  metrics = {f'generator_ce_t{t + 1}': trace.ce[t] for t in range(trace.ce.shape[0])}
  metrics.update(generator_ce_last=trace.ce[-1], gn_channel_norm=jnp.mean(trace.gn_norm),
                 adv_boundary_share=boundary_share(x, x_adv, eps))
  return metrics


def generator_objective(gen_params, gen_batch_stats, *, generator, logits_fn, x, labels, z,
                        settings: GameSettings, start_key=None):
  """L_G = sum_t [CE_mean(f(x_adv_t), y) + lambda * L_div,t] (to be maximised).

  `start_key` draws delta_0 when the settings ask for a random start.
  Returns (L_G, (x_adv_T, new batch_stats, GameTrace)).
  """
  x_advs, batch_stats, gn_norms = learned.recursive_attack(
      generator_fn_for(generator, gen_params), logits_fn, x, labels, z, gen_batch_stats,
      settings.options, key=start_key)
  steps, n = x_advs.shape[:2]
  # One classifier pass over all T steps: a bigger batch is faster than T small ones.
  logits = logits_fn(x_advs.reshape((steps * n,) + x_advs.shape[2:]))
  ce = jnp.mean(cross_entropy(logits, jnp.tile(labels, steps)).reshape(steps, n), axis=1)
  if settings.draws == 2:
    div = jax.vmap(learned.diversity_loss, in_axes=(0, None))(x_advs, z)
  else:
    div = jnp.zeros((steps,))
  objective = jnp.sum(ce) + settings.diversity_weight * jnp.sum(div)
  return objective, (x_advs[-1], batch_stats, GameTrace(ce, div, gn_norms))


def worst_draw(logits_fn, x_adv, labels, draws: int):
  """Per image, the z draw of x_adv ([draws * B, ...], draw-major as [x; x]) with the
  highest CE: the classifier then trains on the worst attack of the draws, as PGD with
  restarts keeps its worst restart. Returns (x_adv [B, ...], labels [B])."""
  batch = labels.shape[0] // draws
  ce = cross_entropy(logits_fn(x_adv), labels).reshape(draws, batch)
  pick = jnp.argmax(ce, axis=0)
  chosen = x_adv.reshape((draws, batch) + x_adv.shape[1:])[pick, jnp.arange(batch)]
  return chosen, labels[:batch]


def game_step(state, images, labels, *, model, generator, tx, gen_tx, settings: GameSettings,
              data_config, base_key):
  """One iteration of Algorithm 1: generator ascent, then the classifier update."""
  key = jax.random.fold_in(base_key, state.step)
  augment_key, z_key, start_key = jax.random.split(key, 3)
  penalty_key = jax.random.fold_in(key, 3)  # apart: the three above stay as they were
  x = data_lib.augment(augment_key, data_lib.to_float(images), data_config.crop_padding,
                       data_config.horizontal_flip)
  batch, draws = x.shape[0], settings.draws
  x_rep, y_rep = jnp.tile(x, (draws, 1, 1, 1)), jnp.tile(labels, draws)
  classifier_vars = {'params': state.params, 'batch_stats': state.batch_stats}
  logits_fn = lambda v: model.apply(classifier_vars, v, train=False)

  new_gen = state.generator
  for update in range(settings.generator_updates):  # static: unrolled into the one step
    gen = new_gen
    z = draw_latents(z_key if update == 0 else jax.random.fold_in(z_key, update), batch,
                     settings)
    objective = functools.partial(generator_objective, generator=generator,
                                  logits_fn=logits_fn, x=x_rep, labels=y_rep, z=z,
                                  settings=settings,
                                  start_key=jax.random.fold_in(start_key, update))
    (gen_objective, (x_adv, gen_stats, trace)), gen_grads = jax.value_and_grad(
        objective, has_aux=True)(gen.params, gen.batch_stats)
    ascent = jax.tree_util.tree_map(jnp.negative, gen_grads)  # maximise L_G
    gen_updates, gen_opt_state = gen_tx.update(ascent, gen.opt_state, gen.params)
    new_gen = GeneratorState(optax.apply_updates(gen.params, gen_updates), gen_stats,
                             gen_opt_state)

  # The classifier sees the attack of the generator before its last update (Algorithm 1).
  x_adv = jax.lax.stop_gradient(x_adv)
  x_train, y_train = x_adv, y_rep
  if settings.worst_draw_only and draws > 1:
    x_train, y_train = worst_draw(logits_fn, x_adv, y_rep, draws)
  inputs = jnp.concatenate([x, x_train])
  input_labels = jnp.concatenate([labels, y_train])

  penalty = regularizers.grad_align_penalty(settings.grad_align_weight, model,
                                           state.batch_stats, x, labels,
                                           settings.options.eps, penalty_key)
  new_state, loss, logits, grads, penalty_value = optimizers.classifier_update(
      state, model, tx, inputs, input_labels, penalty)
  new_state = new_state.replace(generator=new_gen)
  correct = jnp.argmax(logits, -1) == input_labels
  metrics = {'loss': loss, 'grad_norm': optax.tree.norm(grads),
             'generator_objective': gen_objective,
             'generator_grad_norm': optax.tree.norm(gen_grads),
             'train_clean_accuracy': jnp.mean(correct[:batch]),
             'train_adv_accuracy': jnp.mean(correct[batch:]),
             **game_metrics(trace, x_rep, x_adv, settings.options.eps)}
  if penalty is not None:
    metrics['grad_align_penalty'] = penalty_value
  if draws == 2:
    metrics['diversity_last'] = trace.diversity[-1]
  if settings.z_dim > 0:
    metrics['z_live_units'] = z_live_units(new_gen.params, z)
  return new_state, metrics
