"""The robustness report behind `evaluate.py`: every attack on one checkpoint, one table.

Reads top to bottom: restore the classifier -> build each named attack -> run it over
the test set, keeping per-example correctness -> accuracy per attack, the paper's "Min"
and the per-example worst case (SPEC section 6) -> markdown table and JSON.
"""

import dataclasses
import functools
import hashlib
import importlib
import json
import os
import time
import zlib
from typing import Callable, Optional, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from l2lda_jax import attacks
from l2lda_jax import checkpoint as checkpoint_lib
from l2lda_jax import data as data_lib
from l2lda_jax import evaluation
from l2lda_jax import figures
from l2lda_jax import sanity
from l2lda_jax import sharding
from l2lda_jax.attack_specs import (AUTOATTACK_KINDS, GRADIENT_KINDS, SCORE_KINDS, AttackSpec,
                                    parse_attack, pgd_step_size)
from l2lda_jax.attacks import autoattack, l2lda_attack
from l2lda_jax.config_validation import reaches
from l2lda_jax.json_files import replaced_whole, write_json_atomic
from l2lda_jax.models import create_classifier


class EvaluationError(RuntimeError):
  """Bad evaluate.py input (a missing run, checkpoint or surrogate); one line, no traceback."""


@dataclasses.dataclass
class EvalOptions:
  """What evaluate.py was asked for (its flags, parsed)."""
  workdir: str
  attacks: Sequence[AttackSpec]
  checkpoint: str = 'best'  # best | latest | a step number
  checkpoint_dir: str = ''  # one orbax step directory, instead of workdir's managers
  eps: Optional[float] = None  # None: the run's config.eps
  num_examples: int = 0  # 0: the whole split
  split: str = 'test'  # or 'validation': to compare recipes without touching the test set
  batch_size: int = 500
  seed: int = 0
  pgd_step_size: Optional[float] = None  # None: attack_specs.pgd_step_size
  surrogates: Sequence[str] = ()
  transfer_attack: str = 'pgd40'
  generator_steps: int = 1000  # fine-tuning / training steps of the generator attacks
  generator_batch_size: int = 100
  generator_draws: int = 10
  generator_unroll_steps: int = 10  # T of the fine-tuned L2L-DA attack (SPEC section 6)
  # Generators trained per l2lda / l2l row (seeds seed, seed + 1, ...): an image is broken
  # if any of them breaks it. 1 is the paper's protocol.
  generator_restarts: int = 1
  # Folder of l2lda / l2l generators trained on --surrogates, reused by later transfer
  # evaluations of other targets (Table 3 trains each once, not once per defense); '' = off.
  transfer_generator_cache: str = ''
  checks: bool = False
  check_examples: int = 1000
  check_pgd_steps: int = 20  # PGD-k vs PGD-2k in the convergence check
  large_eps: float = 0.5  # accuracy there must be at most 10% (SPEC: 0.5 on MNIST)
  generative_config_variant: str = ''  # of configs/advgan.py and configs/gap.py
  figures_dir: str = ''  # Figure 2 and accuracy-vs-eps PNG + JSON go here when set
  figure_examples: int = 500
  progress: bool = True
  save_adversarial: str = ''  # .npz of autoattack's adversarial examples, written per stage
  previous_report: Optional[dict] = None  # an interrupted report of the same run: resume it


def validate_options(options: EvalOptions) -> None:
  """One EvaluationError naming the flag, before anything is loaded or compiled."""
  if not options.workdir or not os.path.isdir(options.workdir):
    raise EvaluationError(f'--workdir: {options.workdir!r} is not a directory')
  if options.eps is not None and not 0.0 <= options.eps <= 1.0:
    raise EvaluationError(f'--eps: {options.eps} is outside [0, 1]')
  positive = {'batch_size': options.batch_size, 'generator_draws': options.generator_draws,
              'generator_unroll_steps': options.generator_unroll_steps,
              'generator_batch_size': options.generator_batch_size,
              'generator_restarts': options.generator_restarts}
  non_negative = {'num_examples': options.num_examples,
                  'generator_steps': options.generator_steps,
                  'check_examples': options.check_examples}
  for name, value in positive.items():
    if value < 1:
      raise EvaluationError(f'--{name}: must be at least 1, got {value}')
  for name, value in non_negative.items():
    if value < 0:
      raise EvaluationError(f'--{name}: must be at least 0, got {value}')
  if options.split not in ('test', 'validation'):
    raise EvaluationError(f'--split: {options.split!r} is not test or validation')
  if not reaches(options.generator_unroll_steps, l2lda_attack.L2LDA_ATTACK_STEP, 1.0):
    raise EvaluationError(
        f'--generator_unroll_steps: {options.generator_unroll_steps} steps of eps/4 reach '
        f'{options.generator_unroll_steps / 4:g} eps, short of the eps-ball boundary; use at '
        f'least 4 (SPEC: 10)')
  if options.pgd_step_size is not None and options.pgd_step_size <= 0:
    raise EvaluationError(f'--pgd_step_size: must be positive, got {options.pgd_step_size}')
  checkpoint = str(options.checkpoint).lower()
  if checkpoint not in ('best', 'latest') and not checkpoint.isdigit():
    raise EvaluationError(f'--checkpoint: {options.checkpoint!r} is not best, latest or a step')
  for directory in options.surrogates:
    if not os.path.isdir(directory):
      raise EvaluationError(f'--surrogates: {directory!r} is not a directory')
  if options.save_adversarial:
    if not any(spec.kind == 'autoattack' for spec in options.attacks):
      raise EvaluationError('--save_adversarial: saves the examples of --attacks=autoattack, '
                            'which is not in --attacks')
    folder = os.path.dirname(os.path.abspath(options.save_adversarial))
    if not os.path.isdir(folder):
      raise EvaluationError(f'--save_adversarial: folder {folder!r} does not exist')


@dataclasses.dataclass
class Classifier:
  """A restored classifier: what every attack needs."""
  config: ml_collections.ConfigDict
  apply_fn: Callable  # (variables, x) -> logits, inference mode
  variables: dict
  step: int
  generator: Optional[dict] = None  # the raw generator state of an l2lda / l2l run


# ----------------------------------------------------------------------------- restore
def load_run_config(workdir: str) -> ml_collections.ConfigDict:
  """The training config a workdir recorded (config.json)."""
  path = os.path.join(workdir, 'config.json')
  if not os.path.isfile(path):
    raise EvaluationError(f'--workdir: no training run in {workdir!r} (missing {path})')
  with open(path) as f:
    config = ml_collections.ConfigDict(json.load(f))
  # The data may live elsewhere on this machine than where the run was trained.
  if os.environ.get('L2LDA_MANUAL_DIR'):
    config.data.manual_dir = os.environ['L2LDA_MANUAL_DIR']
  return config


def restore_classifier(workdir: str, checkpoint: str = 'best',
                       checkpoint_dir: str = '') -> Classifier:
  """The classifier (and generator, if any) of `workdir` at best | latest | STEP."""
  config = load_run_config(workdir)
  if checkpoint_dir:
    try:
      raw, step = checkpoint_lib.restore_directory(checkpoint_dir)
    except (FileNotFoundError, checkpoint_lib.CheckpointError) as e:
      raise EvaluationError(str(e)) from None
  else:
    checkpoints = checkpoint_lib.Checkpoints(workdir, keep=1)
    try:
      raw, step = checkpoints.restore_named(checkpoint)
    except (FileNotFoundError, ValueError) as e:
      raise EvaluationError(f'--checkpoint: {e}') from None
    finally:
      checkpoints.close()
  model = create_classifier(config.model, _num_classes(config), config.get('conv_impl', 'auto'))
  variables = {'params': raw['params'], 'batch_stats': raw.get('batch_stats') or {}}
  apply_fn = lambda v, x: model.apply(v, x, train=False)
  return Classifier(config, apply_fn, variables, step, raw.get('generator'))


def _num_classes(config) -> int:
  return 10  # MNIST and CIFAR-10


# ----------------------------------------------------------------------------- attacks
def gradient_attack(spec: AttackSpec, eps: float, step_size: Optional[float] = None,
                    best_iterate: bool = True):
  """(logits_fn, x, y, key) -> x_adv for fgsm / pgd<k>[x<r>] / cw<k> / mifgsm<k>.

  With `best_iterate` (white-box rows) every iterative attack keeps its best iterate per
  example (the first misclassified one, else the highest loss): evaluation reports the
  strongest point it visited. Without it the attack returns its last iterate, which is
  what a transfer row must send (`gradient_transfer_attack`).
  """
  if spec.kind == 'fgsm':
    return functools.partial(attacks.fgsm, eps=eps)
  if spec.kind == 'pgd':
    size = step_size if step_size is not None else pgd_step_size(eps, spec.steps)
    return functools.partial(attacks.pgd, eps=eps, steps=spec.steps, step_size=size,
                             restarts=spec.restarts, best_iterate=best_iterate)
  if spec.kind == 'cw':
    return functools.partial(attacks.cw, eps=eps, steps=spec.steps, best_iterate=best_iterate)
  if spec.kind == 'mifgsm':
    return functools.partial(attacks.mi_fgsm, eps=eps, steps=spec.steps,
                             best_iterate=best_iterate)
  raise ValueError(f'not a gradient attack: {spec.name}')


def gradient_transfer_attack(spec: AttackSpec, eps: float, step_size: Optional[float] = None):
  """A gradient attack as a transfer row runs it on the surrogate: it sends its last iterate.

  The white-box rows' best-iterate rule keeps the first iterate that fools the surrogate,
  a point just past the surrogate's boundary, and such points transfer poorly. Measured
  (docs/reproduction, "Transfer sends the last iterate"): PGD-10 made on one Plain LeNet-5
  left 83.25% of another correct with the first fooling iterate, 44.55% with the last. The
  authors' code keeps the highest-loss iterate (mister_ed's keep_best): 44.60%.
  """
  return gradient_attack(spec, eps, step_size, best_iterate=False)


def make_batch_eval(apply_fn, attack, return_adv: bool = False):
  """Jitted (variables, uint8 images, y, key, **attack_kwargs) -> (correct, Linf distance,
  box violation), and x_adv last when `return_adv`. Keyword arguments go to the attack
  traced, so one compilation serves every value (the figures' eps grid)."""

  def run(variables, images, y, key, **attack_kwargs):
    x, x_adv, correct = evaluation.attack_and_classify(apply_fn, attack, variables, images, y,
                                                       key, **attack_kwargs)
    outputs = (correct, *_violations(x, x_adv))
    return outputs + (x_adv,) if return_adv else outputs

  return jax.jit(run)


def run_batched(batch_fn, variables, split: data_lib.Split, batch_size: int, key,
                desc: str, progress: bool) -> list:
  """`batch_fn` over the split with a progress bar (evaluation.map_batches)."""
  return evaluation.map_batches(batch_fn, variables, split, batch_size, key,
                                sharding.make_data_mesh(), desc, progress)


def transfer_batch_eval(target_apply, surrogate: Classifier, attack):
  """Jitted batch eval of a black-box transfer attack (paper Table 3).

  The attack sees only the surrogate; the target only classifies what it made.
  """
  surrogate_logits = functools.partial(surrogate.apply_fn, surrogate.variables)

  def run(variables, images, y, key):
    x = data_lib.to_float(images)
    x_adv = attack(surrogate_logits, x, y, key)
    correct = jnp.argmax(target_apply(variables, x_adv), -1) == y
    return correct, *_violations(x, x_adv)

  return jax.jit(run)


def _violations(x, x_adv):
  """Per-example Linf distance to x and the largest step outside [0, 1]."""
  axes = tuple(range(1, x.ndim))
  linf = jnp.max(jnp.abs(x_adv - x), axis=axes)
  box = jnp.max(jnp.maximum(x_adv - 1.0, 0.0) + jnp.maximum(-x_adv, 0.0), axis=axes)
  return linf, box


# ----------------------------------------------------------------------------- generator attacks
def train_learned_attack(kind: str, classifier: Classifier, train: data_lib.Split,
                         options: EvalOptions, eps: float, key, log=print,
                         cache_dir: str = '') -> l2lda_attack.LearnedAttack:
  """The L2L-DA (or L2L*) white-box attack of Table 2, fine-tuned against the frozen model
  on the training split (l2lda_attack.train_learned_attack); with `cache_dir`, trained once
  for the same model, data and options and then read back."""
  own = classifier.generator if classifier.config.method == kind else None
  cache_path = (learned_attack_cache_path(cache_dir, kind, classifier, train, options, eps, key)
                if cache_dir else '')
  return l2lda_attack.train_learned_attack(
      kind, classifier.config, functools.partial(classifier.apply_fn, classifier.variables),
      train.images, train.labels, own_generator=own, num_classes=_num_classes(classifier.config),
      eps=eps, unroll_steps=options.generator_unroll_steps, steps=options.generator_steps,
      batch_size=options.generator_batch_size, draws=options.generator_draws,
      seed=options.seed, key=key, log=log, cache_path=cache_path)


def train_learned_attacks(kind: str, classifier: Classifier, train: data_lib.Split,
                          options: EvalOptions, eps: float, key, log=print,
                          cache_dir: str = '') -> list:
  """`options.generator_restarts` trainings of the learned attack: restart r with seed
  `seed + r` and key `key` folded with r (restart 0: `key` itself, so one restart is the
  single training). Combine them with l2lda_attack.first_breaking_attack."""
  trained = []
  for r in range(options.generator_restarts):
    if options.generator_restarts > 1:
      log(f'{kind}: generator restart {r + 1}/{options.generator_restarts}')
    trained.append(train_learned_attack(
        kind, classifier, train, dataclasses.replace(options, seed=options.seed + r), eps,
        key if r == 0 else jax.random.fold_in(key, r), log, cache_dir=cache_dir))
  return trained


def learned_attack_cache_path(cache_dir: str, kind: str, classifier: Classifier,
                              train: data_lib.Split, options: EvalOptions, eps: float,
                              key) -> str:
  """CACHE_DIR/<kind>-<digest>.msgpack, the digest of everything the generator's training
  reads: the attacked model (its config and weights, its own generator's too, not its
  folder, so a moved folder still hits), the training split, eps, the generator options,
  the seed and the key."""
  digest = hashlib.sha256()
  for part in (kind, classifier.config.to_json(sort_keys=True), repr(eps),
               repr((options.generator_unroll_steps, options.generator_steps,
                     options.generator_batch_size, options.generator_draws, options.seed))):
    digest.update(part.encode())
  model = jax.device_get((classifier.variables, classifier.generator))
  for array in (*jax.tree_util.tree_leaves(model), train.images, train.labels, key):
    array = np.ascontiguousarray(np.asarray(array))
    digest.update(f'{array.dtype}{array.shape}'.encode())
    digest.update(array.tobytes())
  return os.path.join(cache_dir, f'{kind}-{digest.hexdigest()[:24]}.msgpack')


# ----------------------------------------------------------------------------- summary
def summarize(rows: list[dict], correct_by_attack: dict[str, np.ndarray]) -> dict:
  """The paper's "Min" over attacks and the per-example worst case (SPEC section 6).

  Worst case: an image is robust only if it is classified correctly clean and under
  every attack run, which is never above "Min".
  """
  attacked = [r for r in rows if r['attack'] != 'clean']
  worst = np.logical_and.reduce(list(correct_by_attack.values()))
  return {
      'min_accuracy': min((r['accuracy'] for r in attacked), default=None),
      'min_attack': min(attacked, key=lambda r: r['accuracy'])['attack'] if attacked else None,
      'worst_case_accuracy': float(np.mean(worst)),
  }


def pack_correct(correct: np.ndarray) -> str:
  """Per-example correctness as hex (one bit per example, in split order): small enough for
  the JSON report, and reports of the same examples combine into a worst case offline."""
  return np.packbits(np.asarray(correct, bool)).tobytes().hex()


def unpack_correct(packed: str, num_examples: int) -> np.ndarray:
  return np.unpackbits(np.frombuffer(bytes.fromhex(packed), np.uint8))[:num_examples].astype(bool)


def markdown_table(report: dict) -> str:
  lines = ['| attack | accuracy % | wall s |', '|---|---|---|']
  for r in report['rows']:
    lines.append(f"| {r['attack']} | {100 * r['accuracy']:.2f} | {r['seconds']:.1f} |")
  if report['min_accuracy'] is not None:
    lines.append(f"| **Min** (lowest single attack: {report['min_attack']}) | "
                 f"{100 * report['min_accuracy']:.2f} | |")
  lines.append(f"| **per-example worst case** (all {len(report['rows'])} rows) | "
               f"{100 * report['worst_case_accuracy']:.2f} | |")
  return '\n'.join(lines)


# ----------------------------------------------------------------------------- the report
def _batch_evals_for(spec: AttackSpec, classifier: Classifier, dataset,
                     options: EvalOptions, eps: float, base_key, log, learned: dict):
  """[(row name, jitted batch eval, key)] for one spec (transfer: one per surrogate).

  The batch eval is None for pgd<k>x<r>, which `restarts_on_survivors` runs instead.

  Trained l2lda / l2l generators are kept in `learned` (kind -> LearnedAttack) for the
  figures.

  A transfer row uses the key of its white-box attack, so a surrogate identical to
  the target gives exactly that attack's last iterate (`gradient_transfer_attack`).
  """
  key = attack_key(base_key, spec)
  if spec.kind == 'clean':
    return [(spec.name, make_batch_eval(classifier.apply_fn, None), key)]
  if spec.kind == 'pgd' and spec.restarts > 1:
    return [(spec.name, None, key)]  # run by restarts_on_survivors, restart by restart
  if spec.kind in ('fgsm', 'pgd', 'cw', 'mifgsm'):
    attack = gradient_attack(spec, eps, options.pgd_step_size)
    return [(spec.name, make_batch_eval(classifier.apply_fn, attack), key)]
  if spec.kind in AUTOATTACK_KINDS:  # a stage of AutoAttack alone, its standard settings
    attack = autoattack.stage_attacks(eps)[spec.kind]
    return [(spec.name, make_batch_eval(classifier.apply_fn, attack), key)]
  if spec.kind == 'square':  # score-based: catches gradient masking (spec.steps = queries)
    attack = functools.partial(attacks.square_linf, eps=eps, n_queries=spec.steps)
    return [(spec.name, make_batch_eval(classifier.apply_fn, attack), key)]
  if spec.kind in ('l2lda', 'l2l'):
    # Its own key for training: the z draws of fine-tuning and of the attack stay apart.
    trained = train_learned_attacks(spec.kind, classifier, dataset.train, options, eps,
                                    jax.random.fold_in(key, 1), log)
    learned[spec.kind] = trained[0]  # the figures trace one generator
    attack = l2lda_attack.first_breaking_attack(trained)
    return [(spec.name, make_batch_eval(classifier.apply_fn, attack), key)]
  if spec.kind in ('advgan', 'gap'):
    return [(spec.name, fit_generative_attack(spec.kind, classifier, dataset.train, options,
                                              eps, key, log), key)]
  if spec.kind == 'transfer':
    if not options.surrogates:
      raise EvaluationError('--attacks=transfer needs --surrogates=DIR1,DIR2,...')
    transfer_spec = parse_attack(options.transfer_attack)
    if transfer_spec.kind not in ('fgsm', 'pgd', 'cw', 'mifgsm', 'l2lda', 'l2l'):
      raise EvaluationError(f'--transfer_attack: {transfer_spec.name!r} is not a gradient '
                            f'or L2L attack')
    evals = []
    for directory in options.surrogates:
      surrogate = restore_classifier(directory, 'best')
      if transfer_spec.kind in ('l2lda', 'l2l'):  # Table 3's L2L-DA: trained on the surrogate
        attack = l2lda_attack.first_breaking_attack(train_learned_attacks(
            transfer_spec.kind, surrogate, dataset.train, options, eps,
            jax.random.fold_in(key, 1), log, cache_dir=options.transfer_generator_cache))
      else:
        attack = gradient_transfer_attack(transfer_spec, eps, options.pgd_step_size)
      name = f'transfer {transfer_spec.name} from {os.path.basename(os.path.normpath(directory))}'
      evals.append((name, transfer_batch_eval(classifier.apply_fn, surrogate, attack),
                    attack_key(base_key, transfer_spec)))
    return evals
  raise EvaluationError(f'--attacks: {spec.name!r} is not supported')


def fit_generative_attack(kind: str, classifier: Classifier, train: data_lib.Split,
                          options: EvalOptions, eps: float, key, log=print):
  """AdvGAN / GAP trained against the frozen classifier with configs/<kind>.py's recipe."""
  from l2lda_jax.attacks import generative as generative_attacks
  attack_config = importlib.import_module(f'configs.{kind}').get_config(
      options.generative_config_variant)
  logits_fn = functools.partial(classifier.apply_fn, classifier.variables)
  fitted = generative_attacks.train_generative_attack(
      kind, attack_config, logits_fn, train.images, train.labels, eps=eps, key=key, log_fn=log)
  return make_batch_eval(classifier.apply_fn, fitted.attack)


def restarts_on_survivors(spec: AttackSpec, classifier: Classifier, test: data_lib.Split,
                          options: EvalOptions, eps: float, key):
  """pgd<k>x<r> as r single-start runs, each only on the examples that every earlier run
  left correctly classified.

  Per example this is pgd with r restarts and best-iterate (broken once any iterate of
  any restart is misclassified), without attacking broken examples again: on a weak
  model most of the cost goes. Run i uses fold_in(key, i). Returns (correct, Linf
  distance, box violation) per example, as run_batched; distances are the max over runs.
  """
  single = dataclasses.replace(spec, restarts=1)
  batch_eval = make_batch_eval(classifier.apply_fn,
                               gradient_attack(single, eps, options.pgd_step_size))
  correct = np.ones(len(test), bool)
  linf, box = np.zeros(len(test), np.float32), np.zeros(len(test), np.float32)
  for restart in range(spec.restarts):
    alive = np.flatnonzero(correct)
    if not len(alive):
      break
    c, l, b = run_batched(batch_eval, classifier.variables, test.select(alive),
                          options.batch_size, jax.random.fold_in(key, restart),
                          f'{spec.name} restart {restart + 1}/{spec.restarts}',
                          options.progress)
    correct[alive] = c
    linf[alive] = np.maximum(linf[alive], l)
    box[alive] = np.maximum(box[alive], b)
  return correct, linf, box


def attack_key(base_key, spec: AttackSpec):
  """A key from the attack's name, not its position: adding an attack changes no other row."""
  return jax.random.fold_in(base_key, zlib.crc32(spec.name.encode()) & 0x7FFFFFFF)


def evaluate(options: EvalOptions, log=print, on_row=None) -> dict:
  """Runs every attack of `options` on the restored classifier; returns the report.

  `on_row(partial_report)`, if given, is called after each attack row with the report so
  far (`complete` False), so an interrupted evaluation keeps the rows it finished; given
  that report back as `options.previous_report`, a rerun resumes after them.
  """
  classifier = restore_classifier(options.workdir, options.checkpoint, options.checkpoint_dir)
  config = classifier.config
  eps = config.eps if options.eps is None else options.eps
  if not 0.0 <= eps <= 1.0:
    raise EvaluationError(f'--eps: {eps} is outside [0, 1]')
  dataset = data_lib.load_dataset(config.data)
  split = dataset.test if options.split == 'test' else dataset.validation
  test = split.take(options.num_examples) if options.num_examples else split
  base_key = jax.random.PRNGKey(options.seed)
  identity = evaluation_identity(options, classifier, eps, test)
  done = resumable_rows(options.previous_report, identity, log)
  rows, correct_by_attack, learned, warnings = [], {}, {}, []

  def report_so_far(complete: bool) -> dict:
    # A partial report carries the resumed rows this run has not reached yet, so that
    # being interrupted again, before it gets to them, does not lose them.
    ahead = {} if complete else {name: done[name] for name in done
                                 if name not in correct_by_attack}
    report = _report(options, classifier, dataset, eps, test,
                     rows + [row for row, _ in ahead.values()],
                     {**correct_by_attack, **{name: c for name, (_, c) in ahead.items()}},
                     complete)
    report['identity'] = identity
    if warnings:
      report['warnings'] = list(warnings)
    return report

  def add_row(row: dict, correct: np.ndarray, resumed: bool = False) -> None:
    rows.append(row)
    correct_by_attack[row['attack']] = correct
    log(f'{row["attack"]}: {100 * row["accuracy"]:.2f}% '
        + ('(resumed)' if resumed else f'({row["seconds"]:.1f} s)'))
    if on_row:
      on_row(report_so_far(False))

  for spec in options.attacks:
    if spec.kind == 'autoattack':
      warnings.extend(run_autoattack(classifier, test, options, eps, base_key, done, add_row,
                                     log, identity))
      continue
    needed_for_figures = options.figures_dir and spec.kind in ('l2lda', 'l2l')
    if spec.name in done and not needed_for_figures:
      add_row(*done[spec.name], resumed=True)
      continue
    setup_start = time.time()
    for name, batch_eval, key in _batch_evals_for(spec, classifier, dataset, options, eps,
                                                  base_key, log, learned):
      if name in done and not needed_for_figures:
        add_row(*done[name], resumed=True)
        setup_start = time.time()
        continue
      start = time.time()
      if batch_eval is None:
        correct, linf, box = restarts_on_survivors(spec, classifier, test, options, eps, key)
      else:
        correct, linf, box = run_batched(batch_eval, classifier.variables, test,
                                         options.batch_size, key, name, options.progress)
      seconds = time.time() - start
      add_row({'attack': name, 'accuracy': float(np.mean(correct)), 'seconds': seconds,
               'setup_seconds': start - setup_start, 'max_linf': float(np.max(linf)),
               'max_box_violation': float(np.max(box))}, correct)
      setup_start = time.time()
  report = report_so_far(True)
  if options.figures_dir:
    report['figures'] = make_figures(classifier, test, options, eps, base_key, learned, log)
  if options.checks:
    checks = sanity_checks(classifier, test, rows, options, eps, base_key, log,
                           correct_by_attack)
    report['checks'] = [dataclasses.asdict(c) for c in checks]
    report['checks_text'] = [sanity.format_check(c) for c in checks]
    report['checks_passed'] = all(c.passed for c in checks)
  return report


# ----------------------------------------------------------------------------- resume
def evaluation_identity(options: EvalOptions, classifier: Classifier, eps: float, test) -> dict:
  """What a row's result depends on besides its name: a report is resumed only when all of
  it is the same (the examples, eps, seed, batch size (it sets each batch's key), and the
  options that change what a named row runs)."""
  return {'workdir': os.path.abspath(options.workdir), 'checkpoint_step': classifier.step,
          'checkpoint_dir': os.path.abspath(options.checkpoint_dir) if options.checkpoint_dir
          else '', 'split': options.split, 'num_examples': len(test), 'eps': eps,
          'seed': options.seed, 'batch_size': options.batch_size,
          'pgd_step_size': options.pgd_step_size,
          'surrogates': [os.path.abspath(d) for d in options.surrogates],
          'transfer_attack': options.transfer_attack,
          'generator_steps': options.generator_steps,
          'generator_batch_size': options.generator_batch_size,
          'generator_draws': options.generator_draws,
          'generator_unroll_steps': options.generator_unroll_steps,
          'generative_config_variant': options.generative_config_variant,
          # Only when used: reports written before the option existed stay resumable.
          **({'generator_restarts': options.generator_restarts}
             if options.generator_restarts != 1 else {}),
          # Transfer rows sent the first surrogate-fooling iterate before they sent the last:
          # a report of the old rule is not resumed.
          **({'transfer_sends': 'last_iterate'}
             if any(spec.kind == 'transfer' for spec in options.attacks) else {})}


def resumable_rows(previous: Optional[dict], identity: dict, log=print) -> dict:
  """Row name -> (row, per-example correct) of an earlier report of the same evaluation
  (same checkpoint, examples, eps, seed and attack settings), interrupted or finished: an
  interrupted run continues, and a finished one grows by the attacks added to --attacks.
  {} when there is none, it evaluated something else, or it cannot be read."""
  if not previous:
    return {}
  earlier = previous.get('identity')
  if not isinstance(earlier, dict):
    log('not resuming the earlier report: it does not say what it evaluated')
    return {}
  differ = sorted(k for k in set(identity) | set(earlier) if earlier.get(k) != identity.get(k))
  if differ:
    log(f'not resuming the earlier report: its {", ".join(differ)} differ')
    return {}
  try:
    bits = previous['per_example_correct']
    n = identity['num_examples']
    done = {row['attack']: (row, unpack_correct(bits[row['attack']], n))
            for row in previous['rows'] if row['attack'] in bits}
  except (KeyError, TypeError, ValueError) as e:
    log(f'not resuming the earlier report: it cannot be read ({type(e).__name__}: {e})')
    return {}
  if done:
    state = 'finished' if previous.get('complete') else 'interrupted'
    log(f'resuming the {state} evaluation in --output: {len(done)} row(s) already done')
  return done


# ----------------------------------------------------------------------------- AutoAttack
class AdversarialStore:
  """AutoAttack's adversarial examples in one .npz, rewritten whole after every stage:
  x_adv (x itself where no stage succeeded), labels, clean_correct, broken_at (the index
  of the stage in STANDARD_STAGES that broke the example, -1 if none did), and the
  evaluation's identity as JSON."""

  def __init__(self, path: str, x: np.ndarray, labels: np.ndarray, clean_correct: np.ndarray,
               identity: dict):
    self.path = path
    self.identity = json.dumps(identity, sort_keys=True)
    self.arrays = {'x_adv': x.copy(), 'labels': labels, 'clean_correct': clean_correct,
                   'broken_at': np.full(len(labels), -1, np.int8),
                   'identity': np.array(self.identity)}

  def load_finished_stages(self) -> bool:
    """Takes x_adv and broken_at from the file at `path` if an earlier run of this same
    evaluation wrote it (for the stages a resumed run skips); returns whether it did."""
    try:
      with np.load(self.path) as saved:
        if str(saved['identity']) != self.identity or saved['x_adv'].shape != self.arrays[
            'x_adv'].shape:
          return False
        self.arrays.update(x_adv=saved['x_adv'], broken_at=saved['broken_at'])
        return True
    except (OSError, KeyError, ValueError):
      return False

  def record(self, stage_index: int, indices: np.ndarray, correct: np.ndarray, x_adv) -> None:
    broken = indices[~np.asarray(correct, bool)]
    self.arrays['x_adv'][broken] = np.asarray(x_adv)[~np.asarray(correct, bool)]
    self.arrays['broken_at'][broken] = stage_index

  def write(self) -> None:
    with replaced_whole(self.path, 'wb') as f:
      np.savez_compressed(f, **self.arrays)


def autoattack_input_warnings(logits_fn, test: data_lib.Split, batch_size: int) -> list[str]:
  """AutoAttack's two checks on what it is given, as `--checks` runs them (`sanity`): the
  outputs must be logits, and no example's input gradient may be exactly zero (AutoAttack
  warns at any such example, so the limit here is 0, not `--checks`' 1%)."""
  x = np.asarray(data_lib.to_float(test.images))
  checks = (sanity.check_outputs_are_logits(logits_fn, x, batch_size=batch_size),
            sanity.check_zero_gradients(logits_fn, x, test.labels, batch_size=batch_size,
                                        max_share=0.0))
  return [f'{check.name} failed: {check.detail}; the attacks expect logits with useful '
          f'gradients, so robust accuracy may be overestimated' for check in checks
          if not check.passed]


def balanced_batch_size(n: int, batch_size: int) -> int:
  """The smallest batch that covers n examples in as many batches as `batch_size` would:
  a stage runs on the survivors of the ones before (885 of 1,000, say), and padding its
  last batch up to `batch_size` would attack 115 copies for nothing. Every stage compiles
  its own program anyway, so its batch shape costs no extra compilation."""
  batches = -(-n // batch_size)
  return -(-n // batches)


def run_autoattack(classifier: Classifier, test: data_lib.Split, options: EvalOptions,
                   eps: float, base_key, done: dict, add_row, log,
                   identity: dict) -> list[str]:
  """AutoAttack's standard sequence (l2lda_jax.attacks.autoattack), one row per stage with
  the robust accuracy after it; returns AutoAttack's warnings about this evaluation."""
  variables, progress = classifier.variables, options.progress
  logits_fn = functools.partial(classifier.apply_fn, variables)
  clean_correct = run_batched(make_batch_eval(classifier.apply_fn, None), variables, test,
                              options.batch_size, base_key, 'autoattack clean', progress)[0]
  warnings = autoattack_input_warnings(logits_fn, test, options.batch_size)
  done_stages = {stage: done[autoattack.row_name(stage)][1]
                 for stage in autoattack.STANDARD_STAGES if autoattack.row_name(stage) in done}
  store = None
  if options.save_adversarial:
    store = AdversarialStore(options.save_adversarial,
                             np.asarray(data_lib.to_float(test.images)), test.labels,
                             clean_correct, identity)
    if done_stages and not store.load_finished_stages():
      log(f'rerunning every autoattack stage: {options.save_adversarial} does not hold the '
          f'examples of the interrupted run')
      done_stages = {}
  stage_attacks = autoattack.stage_attacks(eps)
  threat = {}  # stage -> (Linf distance, box violation) of the examples it attacked

  def run_stage(stage: str, alive: np.ndarray):
    batch_eval = make_batch_eval(classifier.apply_fn, stage_attacks[stage],
                                 return_adv=store is not None)
    key = attack_key(base_key, parse_attack(stage))  # the key of the stage run alone
    outputs = run_batched(batch_eval, variables, test.select(alive),
                          balanced_batch_size(len(alive), options.batch_size), key,
                          autoattack.row_name(stage), progress)
    threat[stage] = outputs[1], outputs[2]
    return outputs[0], (outputs[3] if store is not None else None)

  def on_stage(result: autoattack.StageResult, alive: np.ndarray, x_adv) -> None:
    name = autoattack.row_name(result.stage)
    if result.resumed:
      add_row(*done[name], resumed=True)
      if store is not None:
        store.write()  # a run resumed after its last stage still leaves the file
      return
    linf, box = threat.get(result.stage, (np.zeros(1), np.zeros(1)))
    if store is not None and len(alive):
      store.record(autoattack.STANDARD_STAGES.index(result.stage), alive, result.robust[alive],
                   x_adv)
      store.write()
    add_row({'attack': name, 'accuracy': float(np.mean(result.robust)),
             'seconds': result.seconds, 'setup_seconds': 0.0, 'attacked': result.attacked,
             'max_linf': float(np.max(linf)), 'max_box_violation': float(np.max(box))},
            result.robust)

  results = autoattack.run_sequence(run_stage, clean_correct, done=done_stages,
                                    on_stage=on_stage)
  masking = autoattack.masking_warning(results)
  warnings = warnings + ([masking] if masking else [])
  for warning in warnings:
    log(f'AutoAttack warning: {warning}')
  return warnings


def _report(options: EvalOptions, classifier: Classifier, dataset, eps: float,
            test: data_lib.Split, rows: list[dict], correct_by_attack: dict,
            complete: bool) -> dict:
  """The JSON report of the rows run so far (the figures and checks are added after)."""
  report = {
      'workdir': os.path.abspath(options.workdir), 'checkpoint_step': classifier.step,
      'method': classifier.config.method, 'dataset': dataset.name, 'lossy_data': dataset.lossy,
      'eps': eps, 'split': options.split, 'num_examples': len(test), 'seed': options.seed,
      'platform': jax.devices()[0].platform, 'device_count': jax.device_count(),
      'date': time.strftime('%Y-%m-%d'), 'complete': complete, 'rows': list(rows),
  }
  if dataset.lossy:
    report['note'] = data_lib.LOSSY_NOTE
  report.update(summarize(rows, correct_by_attack))
  report['table'] = markdown_table(report)
  report['per_example_correct'] = {name: pack_correct(c) for name, c in correct_by_attack.items()}
  return report


def sanity_checks(classifier: Classifier, test: data_lib.Split, rows: list[dict],
                  options: EvalOptions, eps: float, base_key, log,
                  correct_by_attack: Optional[dict] = None) -> list:
  """l2lda_jax.sanity's checks on the first check_examples test images, plus two over
  every example of the attack rows above: the threat model, and (when both kinds ran)
  whether Square broke what the gradient attacks could not."""
  subset = test.take(options.check_examples) if options.check_examples else test
  logits_fn = jax.jit(functools.partial(classifier.apply_fn, classifier.variables))
  start = time.time()
  checks = sanity.run_checks(
      logits_fn, np.asarray(data_lib.to_float(subset.images)), subset.labels,
      jax.random.fold_in(base_key, zlib.crc32(b'checks') & 0x7FFFFFFF), eps=eps,
      large_eps=options.large_eps, pgd_steps=options.check_pgd_steps,
      batch_size=options.batch_size)
  worst = {r['attack']: max(r['max_linf'] - eps, r['max_box_violation']) for r in rows}
  whole_run = dataclasses.replace(sanity.perturbation_result(worst),
                                  name='evaluated_attacks_in_threat_model')
  log(f'sanity checks on {len(subset)} examples: {time.time() - start:.0f} s')
  checks = checks + [whole_run]
  gradient = [s.name for s in options.attacks if s.kind in GRADIENT_KINDS + AUTOATTACK_KINDS]
  score = [s.name for s in options.attacks if s.kind in SCORE_KINDS]
  if any(s.kind == 'autoattack' for s in options.attacks):  # its rows are cumulative
    gradient.append(autoattack.row_name(autoattack.GRADIENT_STAGES[-1]))
    score.append(autoattack.row_name('square'))
  if correct_by_attack and gradient and score:
    checks.append(sanity.square_after_gradient_result(correct_by_attack, gradient, score))
  return checks


def make_figures(classifier: Classifier, test: data_lib.Split, options: EvalOptions,
                 eps: float, base_key, learned: dict, log) -> dict:
  """Figure 2 (per-step attack loss over 10 draws / restarts) and robust accuracy vs eps
  on the first figure_examples test images; PNG + JSON in figures_dir.

  PGD runs T = generator_unroll_steps steps of eps/4; L2L-DA and L2L* appear when their
  attacks were in --attacks (their trained generators are reused, not retrained).
  """
  subset = test.take(options.figure_examples) if options.figure_examples else test
  x = np.asarray(data_lib.to_float(subset.images))
  y = np.asarray(subset.labels)
  logits_fn = functools.partial(classifier.apply_fn, classifier.variables)
  steps = options.generator_unroll_steps
  trace_fns = {f'PGD-{steps} ({options.generator_draws} restarts)': functools.partial(
      _pgd_trace, logits_fn, eps=eps, steps=steps, step_size=eps / 4)}
  names = {'l2lda': f'L2L-DA ({options.generator_draws} z draws)', 'l2l': 'L2L* (one shot)'}
  for kind, attack in learned.items():
    trace_fns[names[kind]] = functools.partial(figures.generator_loss_trace, attack, logits_fn)
  key = jax.random.fold_in(base_key, zlib.crc32(b'figures') & 0x7FFFFFFF)
  curves = figures.loss_curves(trace_fns, x, y, key, options.generator_draws,
                               options.batch_size)
  os.makedirs(options.figures_dir, exist_ok=True)
  paths = {name: os.path.join(options.figures_dir, name) for name in (
      'figure2.png', 'figure2.json', 'accuracy_vs_eps.png', 'accuracy_vs_eps.json')}
  title = f'{classifier.config.method} model, eps {eps:g}, {len(x)} test images'
  figures.plot_loss_curves(curves, paths['figure2.png'], title)
  write_json_atomic({'curves': curves, 'examples': len(x), 'eps': eps}, paths['figure2.json'])

  grid = sorted({round(eps * f, 6) for f in (0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5)} |
                {options.large_eps})
  spec = AttackSpec(f'pgd{options.check_pgd_steps}', 'pgd', options.check_pgd_steps)
  # eps is an argument, not a constant: one compilation serves the whole grid.
  pgd_at = lambda logits_fn, x, y, key, eps: gradient_attack(spec, eps)(logits_fn, x, y, key)
  batch_eval = make_batch_eval(classifier.apply_fn, pgd_at)
  accuracies = []
  for value in grid:
    correct, _, _ = run_batched(functools.partial(batch_eval, eps=np.float32(value)),
                                classifier.variables, subset, options.batch_size,
                                key, f'{spec.name} eps {value:g}', options.progress)
    accuracies.append(float(np.mean(correct)))
  figures.plot_accuracy_vs_eps(grid, accuracies, paths['accuracy_vs_eps.png'],
                               f'{spec.name}, {title}')
  write_json_atomic({'attack': spec.name, 'eps': grid, 'accuracy': accuracies,
                      'examples': len(x)}, paths['accuracy_vs_eps.json'])
  log(f'figures written to {options.figures_dir}')
  return paths


def _pgd_trace(logits_fn, x, y, key, *, eps, steps, step_size):
  return figures.pgd_loss_trace(logits_fn, x, y, key, eps=eps, steps=steps, step_size=step_size)
