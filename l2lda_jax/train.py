"""train_and_evaluate(config, workdir): the whole training run.

Reads top to bottom: input -> model and optimiser -> update step -> checkpoints ->
evaluation on the validation split -> loop -> final test report.
"""

import contextlib
import functools
import json
import math
import os
import time
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax
import tqdm
from absl import logging

from l2lda_jax import attacks
from l2lda_jax import checkpoint as checkpoint_lib
from l2lda_jax import data as data_lib
from l2lda_jax import defenses
from l2lda_jax import evaluation
from l2lda_jax import l2lda
from l2lda_jax.attacks import l2lda_attack
from l2lda_jax import optimizers
from l2lda_jax import regularizers
from l2lda_jax import sharding
from l2lda_jax import summaries
from l2lda_jax.config_validation import ConfigError, validate_config
from l2lda_jax.models import create_classifier


class TrainingDiverged(RuntimeError):
  """A loss became NaN or Inf; the message names the last good checkpoint."""


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  batch_stats: Any
  opt_state: Any
  generator: Any = None  # l2lda.GeneratorState for the generator methods

  @property
  def variables(self):
    return {'params': self.params, 'batch_stats': self.batch_stats}


# ----------------------------------------------------------------------------- model
def learning_rate_schedule(train_config) -> optax.Schedule:
  """Step decay: lr x decay_factor at each of train.lr_decay_steps."""
  return optax.piecewise_constant_schedule(
      train_config.learning_rate,
      {int(s): train_config.lr_decay_factor for s in train_config.lr_decay_steps})


def make_optimizer(train_config) -> optax.GradientTransformation:
  """The classifier's clipped SGD with the step-decayed learning rate (SPEC section 4)."""
  return optimizers.clipped_sgd(learning_rate_schedule(train_config), train_config.momentum,
                                train_config.weight_decay, train_config.grad_clip_norm)


def init_train_state(model, tx, image_shape, seed: int) -> TrainState:
  """A fresh classifier state, built by one compiled program: run eagerly, every
  initialiser and optimiser slot is its own small compilation (ResNet-20: ~290, 16 s of
  a 2-core CPU's start-up)."""

  @jax.jit
  def init(key):
    variables = model.init(key, jnp.zeros((1, *image_shape)), train=False)
    params = variables['params']
    return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                      batch_stats=variables.get('batch_stats', {}), opt_state=tx.init(params))

  return init(jax.random.PRNGKey(seed))


GENERATOR_METHODS = ('l2lda', 'l2l')


def create_train_state(config, model, tx, image_shape, num_classes: int) -> TrainState:
  """The classifier state, plus the generator's for l2lda / l2l."""
  state = init_train_state(model, tx, image_shape, config.seed)
  if config.method in GENERATOR_METHODS:
    settings = l2lda.game_settings(config, num_classes)
    generator = l2lda.make_generator(settings, image_shape[-1])
    state = state.replace(generator=l2lda.init_generator_state(
        generator, l2lda.make_generator_optimizer(config), settings, image_shape, config.seed))
  return state


def load_classifier_from(state: TrainState, workdir: str) -> TrainState:
  """Copies classifier params and BN statistics from another run (config.init_from).

  Takes that run's best-on-validation checkpoint, else its latest. The optimiser and
  the generator start fresh.
  """
  if not os.path.isdir(workdir):
    raise ConfigError(f'config.init_from: {workdir!r} is not a directory')
  source = checkpoint_lib.Checkpoints(workdir, keep=1)
  restored = source.restore_raw()
  source.close()
  if restored is None:
    raise ConfigError(f'config.init_from: no checkpoint in {workdir!r}')
  params, batch_stats = restored['params'], restored.get('batch_stats') or {}
  for name, ours, theirs in (('params', state.params, params),
                             ('batch_stats', state.batch_stats, batch_stats)):
    ours_shapes = jax.tree_util.tree_map(jnp.shape, ours)
    theirs_shapes = jax.tree_util.tree_map(jnp.shape, theirs)
    if ours_shapes != theirs_shapes:
      raise ConfigError(f'config.init_from: the {name} in {workdir!r} do not match '
                        f'this run\'s classifier (config.model)')
  put = lambda new, old: jax.device_put(jnp.asarray(new, old.dtype), old.sharding)
  return state.replace(params=jax.tree_util.tree_map(put, params, state.params),
                       batch_stats=jax.tree_util.tree_map(put, batch_stats, state.batch_stats))


def inference_apply(model):
  """(variables, x) -> logits with BatchNorm on running statistics."""
  return lambda variables, x: model.apply(variables, x, train=False)


# ----------------------------------------------------------------------------- update step
def train_step(state: TrainState, images, labels, *, model, tx, adversary, data_config,
               include_clean_loss: bool, base_key, grad_align_weight: float = 0.0,
               eps: float = 0.0):
  """One SGD step on clean (adversary None) or adversarial examples.

  The adversary sees the classifier in inference mode (running BN statistics);
  the update runs it in training mode (SPEC section 4). `grad_align_weight` > 0 adds
  GradAlign's penalty on the clean images to adversarial steps (regularizers).
  """
  key = jax.random.fold_in(base_key, state.step)
  augment_key, attack_key = jax.random.split(key)
  penalty_key = jax.random.fold_in(attack_key, 1)
  x = data_lib.augment(augment_key, data_lib.to_float(images), data_config.crop_padding,
                       data_config.horizontal_flip)
  batch = x.shape[0]
  if adversary is None:
    inputs, input_labels = x, labels
  else:
    logits_fn = functools.partial(inference_apply(model), state.variables)
    x_adv = adversary(logits_fn, x, labels, attack_key)
    inputs = jnp.concatenate([x, x_adv]) if include_clean_loss else x_adv
    input_labels = jnp.concatenate([labels, labels]) if include_clean_loss else labels

  penalty = None if adversary is None else regularizers.grad_align_penalty(
      grad_align_weight, model, state.batch_stats, x, labels, eps, penalty_key)
  new_state, loss, logits, grads, penalty_value = optimizers.classifier_update(
      state, model, tx, inputs, input_labels, penalty)
  correct = jnp.argmax(logits, -1) == input_labels
  metrics = {'loss': loss, 'grad_norm': optax.tree.norm(grads)}
  if penalty is not None:
    metrics['grad_align_penalty'] = penalty_value
  if adversary is None:
    metrics['train_clean_accuracy'] = jnp.mean(correct)
  elif include_clean_loss:
    metrics['train_clean_accuracy'] = jnp.mean(correct[:batch])
    metrics['train_adv_accuracy'] = jnp.mean(correct[batch:])
  else:
    metrics['train_adv_accuracy'] = jnp.mean(correct)
  return new_state, metrics


def make_train_steps(config, model, tx, num_classes: int, channels: int):
  """(clean_step, adversarial_step), each one jitted function; adversarial is None for plain.

  For l2lda / l2l the adversarial step is the whole game (l2lda.game_step).
  """
  base_key = jax.random.PRNGKey(config.seed)
  step = functools.partial(train_step, model=model, tx=tx, data_config=config.data,
                           include_clean_loss=config.train.include_clean_loss,
                           base_key=base_key)
  clean = jax.jit(functools.partial(step, adversary=None), donate_argnums=0)
  if config.method in GENERATOR_METHODS:
    settings = l2lda.game_settings(config, num_classes)
    game = functools.partial(
        l2lda.game_step, model=model, generator=l2lda.make_generator(settings, channels),
        tx=tx, gen_tx=l2lda.make_generator_optimizer(config), settings=settings,
        data_config=config.data, base_key=base_key)
    return clean, jax.jit(game, donate_argnums=0)
  adversary = defenses.make_adversary(config)
  adv = None if adversary is None else jax.jit(
      functools.partial(step, adversary=adversary,
                        grad_align_weight=config.train.get('grad_align_weight', 0.0),
                        eps=config.eps), donate_argnums=0)
  return clean, adv


# ----------------------------------------------------------------------------- evaluation
# Logged once when the game's generator stops using z (metric z_live_units).
DEAD_Z_WARNING = ('step %d: the generator ignores z (z_live_units 0: every unit of its z MLP is '
                  'zero for every draw), so it is one deterministic attack and its diversity '
                  'loss has no gradient; dead ReLUs do not revive. A larger '
                  'generator.diversity_weight keeps z alive (docs/RESULTS.md, z pathway).')

# Validation attacks PGD at these multiples of eps as well: a cliff between them says at
# what radius the defense stops (a generator that cannot reach eps shows one at its reach).
VALIDATION_EPS_MULTIPLES = (0.5, 1.0, 1.25)


def robust_key(multiple: float) -> str:
  """The report key of PGD accuracy at multiple x eps ('robust_accuracy' at eps itself)."""
  return 'robust_accuracy' if multiple == 1.0 else f'robust_accuracy_eps_x{multiple:g}'


def make_evaluator(config, model, mesh, eval_config, eps_multiples=(1.0,)):
  """(variables, split) -> {'clean_accuracy', robust_key(m) for m in eps_multiples} under
  PGD of eval_config at m x eps (the step scaled with the radius)."""
  apply_fn = inference_apply(model)
  clean_fn = evaluation.make_correct_fn(apply_fn, None)

  # eps and the step are arguments, not constants: one compilation serves every multiple.
  correct_under_pgd = evaluation.make_correct_fn(apply_fn, functools.partial(
      attacks.pgd, steps=eval_config.pgd_steps, unroll=config.attack.unroll))
  robust_fns = {robust_key(m): functools.partial(
      correct_under_pgd, eps=np.float32(m * config.eps),
      step_size=np.float32(m * eval_config.pgd_step_size)) for m in eps_multiples}
  key = jax.random.PRNGKey(config.seed + 1)

  def evaluate(variables, split):
    run = lambda fn: float(np.mean(evaluation.per_example_correct(
        fn, variables, split, eval_config.batch_size, key, mesh)))
    return {'clean_accuracy': run(clean_fn),
            **{name: run(fn) for name, fn in robust_fns.items()}}

  return evaluate


def make_generator_evaluator(config, model, mesh, num_classes: int, channels: int):
  """(state, split) -> accuracy under the run's own generator (one z draw per image).

  Set beside PGD at validation, it says who is winning the game: a generator far weaker
  than PGD is one the classifier has learned to beat without becoming robust.
  """
  settings = l2lda.game_settings(config, num_classes)
  generator = l2lda.make_generator(settings, channels)
  apply_fn = inference_apply(model)

  def correct(variables, images, labels, key):
    logits_fn = functools.partial(apply_fn, variables['classifier'])
    return l2lda_attack.generator_attack_correct(
        variables['generator'], generator=generator, settings=settings, logits_fn=logits_fn,
        x=data_lib.to_float(images), labels=labels, key=key, draws=1)

  correct_fn = jax.jit(correct)
  key = jax.random.PRNGKey(config.seed + 2)

  def evaluate(state, split):
    variables = {'classifier': state.variables, 'generator': state.generator}
    return float(np.mean(evaluation.per_example_correct(
        correct_fn, variables, split, config.eval.batch_size, key, mesh)))

  return evaluate


def validation_scalars(validate, validate_generator, state, split) -> dict:
  """The validation view of the run, with TensorBoard names (val_*)."""
  scalars = {f'val_{k}': v for k, v in validate(state.variables, split).items()}
  if validate_generator is not None:
    scalars['val_generator_accuracy'] = validate_generator(state, split)
  return scalars


def validation_line(scalars: dict, pgd_steps: int) -> str:
  """'clean 0.98, PGD-20 0.90 (eps x0.5 0.95, eps x1.25 0.40), own generator 0.93'."""
  others = [f'eps x{m:g} {scalars["val_" + robust_key(m)]:.4f}'
            for m in VALIDATION_EPS_MULTIPLES if m != 1.0 and 'val_' + robust_key(m) in scalars]
  line = (f'clean {scalars["val_clean_accuracy"]:.4f}, PGD-{pgd_steps} '
          f'{scalars["val_robust_accuracy"]:.4f}')
  if others:
    line += f' ({", ".join(others)})'
  if 'val_generator_accuracy' in scalars:
    line += f', own generator {scalars["val_generator_accuracy"]:.4f}'
  return line


# ----------------------------------------------------------------------------- logging
class Progress:
  """Steps/s and ETA, measured since the current phase began (clean warm-up, then attack
  steps), not since the run began or over the last interval only.

  A warm-up step is far cheaper than an attack step, so a rate carried across the change
  says nothing; and the first interval of a phase includes compiling its step, so the
  phase's clock starts at its first logged step. Until then, and for the phases after the
  current one, the ETA is unknown ('?').
  """

  def __init__(self, first_step: int, total_steps: int, warmup_steps: int):
    self.total, self.warmup = total_steps, warmup_steps
    self.last_step, self.last_time = first_step, time.time()
    self.phase_start = None  # (step, time) of the current phase's first logged step
    self.status = ''  # the last line's rate and ETA, for the terminal's progress bar

  def phase(self, step: int) -> str:
    return 'warm-up' if step <= self.warmup else 'attack'

  def line(self, step: int) -> str:
    now = time.time()
    interval_rate = (step - self.last_step) / max(now - self.last_time, 1e-9)
    if self.phase(step) != self.phase(self.last_step) or self.phase_start is None:
      self.phase_start = (step, now)  # a new phase: its clock starts here
      rate = interval_rate
      eta = None
    else:
      start_step, start_time = self.phase_start
      rate = (step - start_step) / max(now - start_time, 1e-9)
      phase_end = self.warmup if self.phase(step) == 'warm-up' else self.total
      eta = (phase_end - step) / rate if rate > 0 else None
    self.last_step, self.last_time = step, now
    self.status = f'{rate:.2f} steps/s | '
    if self.phase(step) == 'warm-up' and self.warmup < self.total:
      self.status += f'warm-up ETA {_clock(eta)}, then attack steps (not yet timed)'
    else:
      self.status += f'ETA {_clock(eta)}'
    return f'step {step}/{self.total} | {self.status}'


@contextlib.contextmanager
def above_bar(bar: tqdm.tqdm):
  """Log lines go above a terminal's progress bar instead of through it: the bar is
  cleared, the lines written, the bar drawn again below them (no-ops when disabled)."""
  bar.clear()
  try:
    yield
  finally:
    bar.refresh()


def _clock(seconds) -> str:
  if seconds is None or not math.isfinite(seconds):
    return '?'
  return time.strftime('%H:%M:%S', time.gmtime(seconds))


def _fetch_and_check(pending: list, last_good_step: int | None, workdir: str) -> dict:
  """Pulls queued step metrics to the host; stops the run on NaN/Inf."""
  host = jax.device_get(pending)
  for step, metrics in host:
    bad = [k for k, v in metrics.items() if not np.isfinite(v)]
    if bad:
      where = (f'step {last_good_step} in {workdir}/checkpoints' if last_good_step is not None
               else 'none saved yet')
      raise TrainingDiverged(f'{", ".join(bad)} became {metrics[bad[0]]} at step {step}; '
                             f'training stopped. Last good checkpoint: {where}.')
  # Warm-up and adversarial steps report different keys: average each over its own steps.
  keys = sorted({k for _, m in host for k in m})
  return {k: float(np.mean([m[k] for _, m in host if k in m])) for k in keys}


# ----------------------------------------------------------------------------- the run
def run_summary(config, workdir: str) -> str:
  """'l2lda, lenet5, eps 0.3: 18000 steps (2000 clean) of batch 50, lr 0.05 -> WORKDIR'."""
  train_cfg = config.train
  text = (f'{config.method}, {config.model}, eps {config.eps:g}: {train_cfg.steps} steps '
          f'({train_cfg.clean_warmup_steps} clean) of batch {train_cfg.batch_size}, lr '
          f'{train_cfg.learning_rate:g}')
  if config.method == 'l2lda':
    g = config.generator
    text += (f'; generator width {g.width}, T = {g.steps} of {g.step_size:g}, lambda '
             f'{g.diversity_weight:g}, lr {g.learning_rate:g}'
             + (', random start' if g.get('random_start', False) else ''))
  return f'{text} -> {os.path.abspath(workdir)}'


def resolve_run_length(config):
  """config with config.l2lda_run's non-zero fields copied into config.train for l2lda / l2l.

  One config file can then give a gradient-method run and a game run of similar wall
  time. The returned config (written to config.json) holds the values actually used.
  """
  overrides = config.get('l2lda_run')
  if config.method not in GENERATOR_METHODS or not overrides:
    return config
  for field in ('steps', 'batch_size'):
    if not isinstance(overrides[field], int) or overrides[field] < 0:
      raise ConfigError(f'config.l2lda_run.{field}: {overrides[field]!r} must be an integer '
                        '>= 0 (0 keeps config.train\'s)')
  warmup = overrides.get('clean_warmup_steps', -1)
  if not isinstance(warmup, int) or warmup < -1:
    raise ConfigError(f'config.l2lda_run.clean_warmup_steps: {warmup!r} must be an integer '
                      '>= -1 (-1 keeps config.train\'s)')
  config = config.copy_and_resolve_references()
  for field in ('steps', 'batch_size', 'lr_decay_steps', 'learning_rate'):
    value = overrides.get(field)
    if value:
      config.train[field] = value
  if warmup >= 0:
    config.train.clean_warmup_steps = warmup
  return config


def train_and_evaluate(config, workdir: str) -> dict:
  """Trains (or resumes) in `workdir`, then reports test accuracy; returns the report."""
  config = resolve_run_length(config)
  validate_config(config)
  dataset = data_lib.load_dataset(config.data)  # before the workdir: a data error leaves none
  os.makedirs(workdir, exist_ok=True)
  logging.info('run: %s', run_summary(config, workdir))
  logging.info('data: %s', data_lib.describe_source(config.data, dataset))
  logging.info('devices: %s', sharding.describe_devices())
  if dataset.lossy:
    logging.warning(data_lib.LOSSY_NOTE)
  mesh = sharding.make_data_mesh()
  model = create_classifier(config.model, dataset.num_classes, config.conv_impl)
  tx = make_optimizer(config.train)
  image_shape = dataset.train.images.shape[1:]
  state = sharding.replicate(mesh, create_train_state(config, model, tx, image_shape,
                                                      dataset.num_classes))
  checkpoints = checkpoint_lib.Checkpoints(workdir, config.checkpoint.keep, writer=True)
  state, resumed_from = checkpoints.resume(state)  # the newest readable checkpoint
  if resumed_from is not None:
    logging.info('Resumed from step %d in %s', resumed_from, workdir)
  elif config.init_from:
    state = load_classifier_from(state, config.init_from)
    logging.info('Classifier initialised from %s', config.init_from)
  is_main = jax.process_index() == 0  # the one process that writes files other than checkpoints
  if is_main:
    with open(os.path.join(workdir, 'config.json'), 'w') as f:
      f.write(portable_config(config).to_json_best_effort(indent=2))

  clean_step, adv_step = make_train_steps(config, model, tx, dataset.num_classes,
                                          image_shape[-1])
  validate = make_evaluator(config, model, mesh, config.eval, VALIDATION_EPS_MULTIPLES)
  validate_generator = (make_generator_evaluator(config, model, mesh, dataset.num_classes,
                                                 image_shape[-1])
                        if config.method == 'l2lda' else None)
  validation = dataset.validation.take(config.eval.num_examples)
  # TensorBoard events from process 0 only; progress lines are logged below.
  writer = summaries.summary_writer(workdir, enabled=is_main)
  train_cfg = config.train
  first_step = int(state.step)
  progress = Progress(first_step, train_cfg.steps,
                      train_cfg.clean_warmup_steps if adv_step is not None else train_cfg.steps)
  # On a terminal only (disable=None), with this module's phase-aware ETA in place of
  # tqdm's, which would average warm-up steps with attack steps.
  bar = tqdm.tqdm(total=train_cfg.steps, initial=first_step, unit='step', dynamic_ncols=True,
                  bar_format='{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}{postfix}]',
                  disable=None if is_main else True)
  pending, last_good = [], resumed_from
  warned_dead_z = False
  lossy_tag = '[LOSSY JPEG data] ' if dataset.lossy else ''
  start_time = time.time()
  # Each process reads only its own rows of every global batch (all of them with one process).
  own_rows = sharding.process_rows(mesh, train_cfg.batch_size)

  for step in range(first_step, train_cfg.steps):
    idx = data_lib.batch_indices(config.seed, step, len(dataset.train), train_cfg.batch_size)
    idx = idx[own_rows]
    images, labels = sharding.assemble_batch(mesh, train_cfg.batch_size,
                                             dataset.train.images[idx], dataset.train.labels[idx])
    use_clean = adv_step is None or step < train_cfg.clean_warmup_steps
    state, metrics = (clean_step if use_clean else adv_step)(state, images, labels)
    pending.append((step + 1, metrics))
    done = step + 1
    is_last = done == train_cfg.steps
    log_now = done % config.log_every_steps == 0 or is_last
    eval_now = done % config.eval.every_steps == 0 or is_last
    save_now = done % config.checkpoint.every_steps == 0 or is_last
    if log_now or eval_now or save_now:  # never save or evaluate unchecked state
      scalars = _fetch_and_check(pending, last_good, workdir)
      pending = []
      scalars['learning_rate'] = float(learning_rate_schedule(train_cfg)(done))
      if config.method in GENERATOR_METHODS:
        scalars['generator_learning_rate'] = float(config.generator.learning_rate)
      writer.write_scalars(done, scalars)
      line = progress.line(done)
      bar.set_postfix_str(progress.status, refresh=False)
      bar.update(done - bar.n)
      with above_bar(bar):
        logging.info('%s%s | %s', lossy_tag, line,
                     ' '.join(f'{k} {v:.4f}' for k, v in sorted(scalars.items())))
        if scalars.get('z_live_units') == 0 and not warned_dead_z:
          logging.warning(DEAD_Z_WARNING, done)
          warned_dead_z = True
    if eval_now:
      val_scalars = validation_scalars(validate, validate_generator, state, validation)
      writer.write_scalars(done, val_scalars)
      with above_bar(bar):
        logging.info('%svalidation at step %d: %s', lossy_tag, done,
                     validation_line(val_scalars, config.eval.pgd_steps))
        if checkpoints.save_if_best(done, state, val_scalars):
          logging.info('saved the best on validation so far: %s/best/%d', workdir, done)
    if save_now:
      save_start = time.time()
      checkpoints.save(done, state)
      with above_bar(bar):
        logging.info('saved checkpoint %s/checkpoints/%d (%.1f s)', workdir, done,
                     time.time() - save_start)
      last_good = done
  bar.close()
  writer.flush()
  train_seconds = time.time() - start_time

  report = final_test_report(config, model, mesh, dataset, checkpoints, state)
  report.update(train_seconds_this_process=train_seconds, resumed_from_step=resumed_from,
                steps=train_cfg.steps, method=config.method, dataset=dataset.name,
                lossy_data=dataset.lossy, devices=jax.device_count(),
                processes=jax.process_count(), platform=jax.devices()[0].platform)
  if dataset.lossy:
    report['note'] = data_lib.LOSSY_NOTE
  if is_main:
    with open(os.path.join(workdir, 'results.json'), 'w') as f:
      json.dump(report, f, indent=2)
  logging.info('Final report (%s): %s', os.path.join(workdir, 'results.json'), report)
  checkpoints.close()
  return report


# Config fields that name a file or folder: stored absolute, so the workdir can be evaluated
# or exported from any current directory.
PATH_FIELDS = (('data', 'manual_dir'), ('data', 'tfds_data_dir'), ('init_from',))


def portable_config(config):
  """A copy of `config` whose non-empty PATH_FIELDS are absolute paths."""
  config = config.copy_and_resolve_references()
  with config.unlocked():
    for field in PATH_FIELDS:
      parent = functools.reduce(getattr, field[:-1], config)
      value = getattr(parent, field[-1])
      if value:
        setattr(parent, field[-1], os.path.abspath(value))
  return config


def final_test_report(config, model, mesh, dataset, checkpoints, last_state) -> dict:
  """Clean and PGD accuracy on the test set for the last and the best-on-validation states."""
  test = dataset.test.take(config.test.num_examples)
  evaluate = make_evaluator(config, model, mesh, config.test)
  report = {'test_examples': len(test),
            'test_attack': f'PGD-{config.test.pgd_steps} eps {config.eps:g} '
                           f'step {config.test.pgd_step_size:g} random start'}
  report['last'] = dict(step=int(last_state.step), **evaluate(last_state.variables, test))
  if checkpoints.best_step() is not None:
    best, best_step = checkpoints.restore_best(last_state)  # else the newest readable
    report['best_on_validation'] = dict(step=best_step, **evaluate(best.variables, test))
  return report
