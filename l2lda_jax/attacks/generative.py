"""AdvGAN and GAP as evaluation attacks, trained against a frozen classifier (SPEC section 6).

  attack = train_generative_attack('advgan', configs.advgan.get_config(), logits_fn,
                                   train_images, train_labels, eps=0.3, key=key)
  x_adv = attack(logits_fn, x, y, key)   # the (logits_fn, x, y, key) interface of attacks.pgd

Threat model: Linf ball of radius eps around x, then the pixel box [0, 1]; images are float
NHWC in [0, 1]. The classifier is only ever called through `logits_fn` (inference mode) and
is never updated. Once trained, a generator attacks in one forward pass: it does not look at
the classifier, the label or the key at attack time.

- AdvGAN (Xiao et al. 2018), x_adv = clip(x + eps * tanh(G(x)), 0, 1):
    L_G = L_adv + alpha * L_GAN + beta * L_hinge                      (their Eq. 4)
    L_adv = mean max(Z(x_adv)_y - max_{j != y} Z(x_adv)_j, -kappa)    (untargeted form of Eq. 5)
    L_GAN = 1/2 mean (D(x_adv) - 1)^2,
    L_D = 1/2 mean (D(x) - 1)^2 + 1/2 mean D(x_adv)^2                 (least squares, Mao et al.)
    L_hinge = mean max(0, ||x_adv - x||_2 - c)                        (their Eq. 3)
- GAP (Poursaeed et al. 2018), image-dependent:
    delta = eps * G(x) / ||G(x)||_inf per example, x_adv = clip(x + delta, 0, 1)
    loss 'fool': mean -log(1 - p_y(x_adv)), or 'least_likely': log CE_mean(x_adv, argmin_j
    Z(x)_j), the untargeted loss of their public code (GAP_clf.py).
"""

import dataclasses
import functools
import time
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from l2lda_jax import data as data_lib
from l2lda_jax.attacks.losses import cross_entropy
from l2lda_jax.attacks.projection import project_linf
from l2lda_jax.attacks.generative_nets import (AdvGANDiscriminator, AdvGANGenerator,
                                                GAPGenerator)

LogitsFn = Callable[[jax.Array], jax.Array]
KINDS = ('advgan', 'gap')
GAP_LOSSES = ('fool', 'least_likely')


# ----------------------------------------------------------------------------- perturbations
def advgan_perturb(generator: nn.Module, params, x: jax.Array, eps: float) -> jax.Array:
  """x_adv = Proj(x + eps * tanh(G(x))): |tanh| < 1 bounds delta by eps by construction.

  The projection only guards against float rounding; the box clip is AdvGAN's.
  """
  delta = eps * jnp.tanh(generator.apply({'params': params}, x))
  return project_linf(x + delta, x, eps)


def scale_to_linf(g: jax.Array, eps: float) -> jax.Array:
  """GAP's scaling: g * eps / ||g||_inf, per example, so that ||delta||_inf = eps."""
  norm = jnp.max(jnp.abs(g), axis=tuple(range(1, g.ndim)), keepdims=True)
  return g * (eps / jnp.maximum(norm, 1e-12))


def gap_perturb(generator: nn.Module, params, x: jax.Array, eps: float) -> jax.Array:
  """x_adv = Proj(x + eps * G(x) / ||G(x)||_inf) (Poursaeed et al., image-dependent)."""
  delta = scale_to_linf(generator.apply({'params': params}, x), eps)
  return project_linf(x + delta, x, eps)


_PERTURB = {'advgan': advgan_perturb, 'gap': gap_perturb}


# ----------------------------------------------------------------------------- losses
def raw_margin(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Z_y - max_{j != y} Z_j per example: positive while the example is classified correctly."""
  one_hot = jax.nn.one_hot(labels, logits.shape[-1], dtype=logits.dtype)
  true_logit = jnp.sum(logits * one_hot, axis=-1)
  other_best = jnp.max(jnp.where(one_hot > 0, -jnp.inf, logits), axis=-1)
  return true_logit - other_best


def advgan_adv_loss(logits: jax.Array, labels: jax.Array, kappa: float) -> jax.Array:
  """L_adv of AdvGAN, untargeted: mean max(Z_y - max_{j != y} Z_j, -kappa) (C&W f6).

  Once an example is misclassified by a margin kappa it stops pulling on the generator,
  which leaves the generator's capacity to the examples still classified correctly.
  """
  return jnp.mean(jnp.maximum(raw_margin(logits, labels), -kappa))


def lsgan_generator_loss(d_fake: jax.Array) -> jax.Array:
  """L_GAN for G: 1/2 E (D(x_adv) - 1)^2 (least-squares GAN, Mao et al. 2017)."""
  return 0.5 * jnp.mean(jnp.square(d_fake - 1.0))


def lsgan_discriminator_loss(d_real: jax.Array, d_fake: jax.Array) -> jax.Array:
  """L_D: 1/2 E (D(x) - 1)^2 + 1/2 E D(x_adv)^2: real images score 1, perturbed ones 0."""
  return 0.5 * jnp.mean(jnp.square(d_real - 1.0)) + 0.5 * jnp.mean(jnp.square(d_fake))


def hinge_loss(delta: jax.Array, bound: float) -> jax.Array:
  """L_hinge of AdvGAN (their Eq. 3): mean max(0, ||delta||_2 - c)."""
  norms = jnp.sqrt(jnp.sum(jnp.square(delta), axis=tuple(range(1, delta.ndim))) + 1e-12)
  return jnp.mean(jnp.maximum(norms - bound, 0.0))


def fool_loss(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """mean -log(1 - p_y): large while p_y is near 1, zero once p_y is 0.

  log(1 - p_y) = logsumexp_{j != y} Z_j - logsumexp_j Z_j, which stays finite where
  1 - p_y underflows.
  """
  one_hot = jax.nn.one_hot(labels, logits.shape[-1], dtype=logits.dtype)
  others = jax.nn.logsumexp(jnp.where(one_hot > 0, -jnp.inf, logits), axis=-1)
  return jnp.mean(jax.nn.logsumexp(logits, axis=-1) - others)


def least_likely_loss(logits: jax.Array, clean_logits: jax.Array) -> jax.Array:
  """GAP's untargeted loss (GAP_clf.py): log CE_mean(k(x_adv), argmin_j k(x)_j), minimised."""
  target = jnp.argmin(clean_logits, axis=-1)
  return jnp.log(jnp.mean(cross_entropy(logits, target)))


# ----------------------------------------------------------------------------- the attack
@dataclasses.dataclass(frozen=True, eq=False)  # identity hash: params are arrays
class GenerativeAttack:
  """A trained generator used as an attack with the `(logits_fn, x, y, key)` interface.

  Attributes:
    kind: 'advgan' or 'gap'.
    generator: the Flax module (AdvGANGenerator or GAPGenerator).
    params: its trained parameters (the generator has no other variables).
    eps: the Linf radius it was trained for.
    history: the logged training metrics, one dict per log line.
    seconds: wall time of the training loop, compilation included.
  """
  kind: str
  generator: nn.Module
  params: Any
  eps: float
  history: tuple = ()
  seconds: float = 0.0

  @property
  def variables(self):
    return {'params': self.params}

  def perturb(self, x: jax.Array) -> jax.Array:
    """x_adv for float NHWC images in [0, 1], differentiable w.r.t. the parameters."""
    return _PERTURB[self.kind](self.generator, self.params, x, self.eps)

  def attack(self, logits_fn: LogitsFn, x: jax.Array, y: jax.Array,
             key: jax.Array | None = None) -> jax.Array:
    """The attack interface of `l2lda_jax.attacks`: x_adv inside the eps-ball and [0, 1].

    A feed-forward attack: the classifier, labels and key are not used at attack time.
    """
    del logits_fn, y, key
    return jax.lax.stop_gradient(self.perturb(x))

  __call__ = attack


# ----------------------------------------------------------------------------- training
def make_networks(kind: str, attack_config):
  """(generator, discriminator or None) for `kind` from `attack_config`."""
  g = attack_config.generator
  if kind == 'advgan':
    return (AdvGANGenerator(width=g.width, res_blocks=g.res_blocks),
            AdvGANDiscriminator(width=attack_config.discriminator.width))
  if kind == 'gap':
    return GAPGenerator(width=g.width, res_blocks=g.res_blocks), None
  raise ValueError(f'generative attack kind must be one of {KINDS}, got {kind!r}')


def _adam(attack_config, learning_rate: float) -> optax.GradientTransformation:
  return optax.adam(learning_rate, b1=attack_config.adam_b1, b2=attack_config.adam_b2)


def init_key(key: jax.Array) -> jax.Array:
  """An 'rbg' key made from `key` (raw uint32 or typed), used only to initialise networks.

  XLA:CPU compiles threefry-based initialisation slowly: for the smoke GAP generator, a
  jitted init took 23.6 CPU-seconds with threefry and 2.8 with rbg. rbg streams may differ
  between backends, which does not matter for an attack's starting point.
  """
  if jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key):
    key = jax.random.key_data(key)
  data = jnp.ravel(key).astype(jnp.uint32)
  return jax.random.wrap_key_data(jnp.concatenate([data, data])[:4], impl='rbg')


def init_state(kind: str, attack_config, image_shape, key: jax.Array) -> dict:
  """Parameters and Adam states: {'g', 'g_opt'} and, for AdvGAN, {'d', 'd_opt'}."""
  generator, discriminator = make_networks(kind, attack_config)
  g_key, d_key = jax.random.split(init_key(key))
  dummy = jnp.zeros((1,) + tuple(image_shape), jnp.float32)
  # One jitted init: op-by-op initialisation compiles a program per parameter shape.
  g_params = jax.jit(generator.init)(g_key, dummy)['params']
  state = {'g': g_params, 'g_opt': _adam(attack_config, attack_config.learning_rate).init(g_params)}
  if discriminator is not None:
    d_params = jax.jit(discriminator.init)(d_key, dummy)['params']
    state['d'] = d_params
    state['d_opt'] = _adam(attack_config, attack_config.d_learning_rate).init(d_params)
  return state


def generator_loss(kind: str, attack_config, g_params, *, generator, logits_fn: LogitsFn,
                   x: jax.Array, y: jax.Array, eps: float, discriminator=None, d_params=None):
  """(loss, metrics) of the generator on one batch; `loss` is what the generator minimises."""
  x_adv = _PERTURB[kind](generator, g_params, x, eps)
  logits = logits_fn(x_adv)
  metrics = {'adv_accuracy': jnp.mean(jnp.argmax(logits, -1) == y)}
  if kind == 'advgan':
    adv = advgan_adv_loss(logits, y, attack_config.kappa)
    gan = lsgan_generator_loss(discriminator.apply({'params': d_params}, x_adv))
    hinge = hinge_loss(x_adv - x, attack_config.hinge_bound)
    loss = adv + attack_config.alpha * gan + attack_config.beta * hinge
    metrics.update(loss_adv=adv, loss_gan=gan, loss_hinge=hinge)
  elif attack_config.loss == 'fool':
    loss = fool_loss(logits, y)
    metrics['loss_adv'] = loss
  else:  # 'least_likely'; the target comes from the clean prediction, as in GAP's code
    loss = least_likely_loss(logits, jax.lax.stop_gradient(logits_fn(x)))
    metrics['loss_adv'] = loss
  return loss, metrics


def make_train_step(kind: str, attack_config, logits_fn: LogitsFn, eps: float):
  """One jitted step (state, images, labels) -> (state, metrics).

  AdvGAN alternates as Xiao et al. do: the discriminator steps on (x, x_adv of the current
  generator), then the generator steps against the updated discriminator. uint8 images
  are converted to [0, 1] inside the step.
  """
  generator, discriminator = make_networks(kind, attack_config)
  g_tx = _adam(attack_config, attack_config.learning_rate)
  d_tx = _adam(attack_config, attack_config.d_learning_rate) if discriminator else None

  def step(state, images, labels):
    x = data_lib.to_float(images) if images.dtype == jnp.uint8 else images
    state = dict(state)
    metrics = {}
    if discriminator is not None:
      x_fake = jax.lax.stop_gradient(_PERTURB[kind](generator, state['g'], x, eps))

      def d_loss_fn(d_params):
        score = lambda v: discriminator.apply({'params': d_params}, v)
        return lsgan_discriminator_loss(score(x), score(x_fake))

      d_loss, d_grads = jax.value_and_grad(d_loss_fn)(state['d'])
      updates, state['d_opt'] = d_tx.update(d_grads, state['d_opt'], state['d'])
      state['d'] = optax.apply_updates(state['d'], updates)
      metrics['loss_d'] = d_loss

    loss_fn = functools.partial(generator_loss, kind, attack_config, generator=generator,
                                logits_fn=logits_fn, x=x, y=labels, eps=eps,
                                discriminator=discriminator, d_params=state.get('d'))
    (loss, g_metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(state['g'])
    updates, state['g_opt'] = g_tx.update(grads, state['g_opt'], state['g'])
    state['g'] = optax.apply_updates(state['g'], updates)
    metrics.update(g_metrics, loss_g=loss)
    return state, metrics

  return jax.jit(step)


def _check_config(kind: str, attack_config):
  if kind not in KINDS:
    raise ValueError(f'generative attack kind must be one of {KINDS}, got {kind!r}')
  if attack_config.get('kind', kind) != kind:
    raise ValueError(f'attack kind {kind!r} does not match its config '
                     f'(config.kind={attack_config.kind!r})')
  if kind == 'gap' and attack_config.loss not in GAP_LOSSES:
    raise ValueError(f'config.loss={attack_config.loss!r} must be one of {GAP_LOSSES}')


def train_generative_attack(kind: str, attack_config, logits_fn: LogitsFn,
                            train_images: np.ndarray, train_labels: np.ndarray, *, eps: float,
                            key: jax.Array, log_fn: Callable[[str], Any] = print
                            ) -> GenerativeAttack:
  """Trains an AdvGAN or GAP generator against the frozen classifier `logits_fn`.

  Args:
    kind: 'advgan' or 'gap'.
    attack_config: configs/advgan.py or configs/gap.py `get_config()`.
    logits_fn: images in [0, 1] -> logits, the classifier in inference mode. It is closed
      over by the jitted step and never updated.
    train_images: NHWC, uint8 (as `data.Split` holds them) or float32 in [0, 1].
    train_labels: int labels, the ground truth (GAP's least-likely loss ignores them).
    eps: Linf radius of the threat model.
    key: initialises the networks; batches are drawn deterministically from
      `attack_config.seed` (epoch-wise shuffles, `data.batch_indices`).
    log_fn: receives one progress line every `attack_config.log_every_steps` steps.

  Returns:
    A GenerativeAttack holding the trained generator parameters.
  """
  _check_config(kind, attack_config)
  train_labels = np.asarray(train_labels, np.int32)
  num_examples = len(train_labels)
  batch_size = min(attack_config.batch_size, num_examples)
  state = init_state(kind, attack_config, train_images.shape[1:], key)
  step_fn = make_train_step(kind, attack_config, logits_fn, eps)
  generator, _ = make_networks(kind, attack_config)

  steps, every = attack_config.steps, max(1, attack_config.log_every_steps)
  history, start = [], time.time()
  for step in range(steps):
    idx = data_lib.batch_indices(attack_config.seed, step, num_examples, batch_size)
    state, metrics = step_fn(state, train_images[idx], train_labels[idx])
    if (step + 1) % every == 0 or step + 1 == steps:
      metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
      elapsed = time.time() - start
      history.append(dict(metrics, step=step + 1, seconds=elapsed))
      fields = ' '.join(f'{k}={v:.4f}' for k, v in sorted(metrics.items()))
      log_fn(f'{kind} step {step + 1}/{steps} {fields} ({elapsed:.0f} s)')
  return GenerativeAttack(kind=kind, generator=generator, params=state['g'], eps=float(eps),
                          history=tuple(history), seconds=time.time() - start)
