"""One command per paper table and figure: train what it needs, evaluate, write the table.

  python -m l2lda_jax.reproduce --target=table2 --scale=cpu --workdir=runs/repro
  python -m l2lda_jax.reproduce --target=table1 --scale=smoke --workdir=/tmp/repro --seeds=2
  python -m l2lda_jax.reproduce --target=table1 --scale=cpu --workdir=runs/table1_short \
      --override=l2lda_run.steps=9000 --override='l2lda_run.lr_decay_steps=(7000,8500)'
      # a shorter budget than the :cpu recipe, the same for every row, stated in the table

Targets: table1 (ablations), table2 (white-box, MNIST), table3 (black-box transfer),
figure2 (per-step attack loss); rows, columns and the paper's numbers are in
l2lda_jax.paper_tables. Scales: `smoke` (minutes on a 2-core CPU, for tests), `cpu` (each
method's `configs/mnist.py:cpu` recipe), `paper` (`configs/mnist.py`, for a GPU or TPU).

Every model is an ordinary `train.py` run in DIR/runs/<model>-seed<k> and every column an
ordinary `evaluate.py` run whose report is DIR/runs/<model>-seed<k>/reproduce/<attack>.json;
both commands are printed and written to DIR/<target>.md, so any one of them can be rerun
by hand. They run in this process (one compilation cache for all), as the commands would.
A model already trained in DIR is skipped, an interrupted one resumes from its checkpoints,
a finished evaluation is reused (also by the other targets: Table 3's rows are Table 2's
models) and an interrupted one resumes. Writes DIR/<target>.md, DIR/<target>.json (every
seed's numbers) and the PNGs.
"""

import dataclasses
import json
import os
import shlex
import sys
import time
from typing import Callable, Optional

import numpy as np

from l2lda_jax import paper_tables
from l2lda_jax import reproduction_report as report_lib
from l2lda_jax.json_files import read_json_object, write_json_atomic
from l2lda_jax.paper_tables import Column, Model, Table

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class ReproduceError(RuntimeError):
  """A workdir that holds something else than this reproduction asks for; one line."""


# ----------------------------------------------------------------------------- scales
@dataclasses.dataclass(frozen=True)
class Scale:
  """How big every model and evaluation of a reproduction is."""
  name: str
  config: str  # train.py --config
  train_overrides: tuple[tuple[str, str], ...]  # for every model, before the row's own
  num_examples: int  # test images each attack sees (0: the whole test set)
  batch_size: int
  generator_steps: int  # training steps of the L2L-DA / L2L* attack generator
  generator_draws: int
  generator_unroll_steps: int
  generative_config_variant: str  # of configs/advgan.py and configs/gap.py
  figure_examples: int
  check_pgd_steps: int  # the PGD-k of Figure 2's accuracy-vs-eps companion plot
  attack_names: tuple[tuple[str, str], ...] = ()  # paper attack -> the one run at this scale

  def attack(self, paper_name: str) -> str:
    return dict(self.attack_names).get(paper_name, paper_name)


SCALES = {
    # Minutes on a 2-core CPU, for tests: configs/mnist.py:smoke shrunk to 4 steps (2 of
    # them adversarial), 32 test images, the attacks' step counts cut to 2-3.
    'smoke': Scale(
        'smoke', 'configs/mnist.py:smoke',
        (('data.validation_size', '32'), ('train.steps', '4'), ('train.batch_size', '16'),
         ('train.clean_warmup_steps', '2'), ('train.lr_decay_steps', '(3,)'),
         ('eval.every_steps', '4'), ('eval.num_examples', '32'), ('eval.batch_size', '32'),
         ('eval.pgd_steps', '2'), ('test.num_examples', '32'), ('test.batch_size', '32'),
         ('test.pgd_steps', '2'), ('checkpoint.every_steps', '4'), ('log_every_steps', '4'),
         ('generator.unroll', 'False')),  # a rolled scan compiles several times faster
        # Compilation is most of a smoke run: the L2L-DA / L2L* attack generators are used
        # untrained (0 steps: the run's own generator, or a fresh one), and AutoAttack's
        # column is its first stage, APGD-CE.
        num_examples=32, batch_size=32, generator_steps=0, generator_draws=2,
        generator_unroll_steps=4, generative_config_variant='smoke', figure_examples=32,
        check_pgd_steps=2,
        attack_names=(('pgd10', 'pgd2'), ('pgd100', 'pgd3'), ('cw100', 'cw2'),
                      ('cw1000', 'cw3'), ('autoattack', 'apgd-ce'))),
    # Each method's :cpu recipe (configs/mnist.py); 2,000 test images, as docs/RESULTS.md.
    'cpu': Scale('cpu', 'configs/mnist.py:cpu', (), num_examples=2000, batch_size=500,
                 generator_steps=1000, generator_draws=10, generator_unroll_steps=10,
                 generative_config_variant='', figure_examples=500, check_pgd_steps=20),
    # The paper's recipe (SPEC section 4) and the whole test set.
    'paper': Scale('paper', 'configs/mnist.py', (), num_examples=0, batch_size=500,
                   generator_steps=1000, generator_draws=10, generator_unroll_steps=10,
                   generative_config_variant='', figure_examples=500, check_pgd_steps=20),
}

@dataclasses.dataclass(frozen=True)
class Reproduction:
  """What every step of one `reproduce` call shares."""
  scale: Scale
  workdir: str
  seeds: int = 1
  log: Callable = print
  progress: bool = False  # progress bars of the evaluations (on a terminal)
  # --override FIELD=VALUE: for every model, e.g. a shorter budget for all of Table 1.
  overrides: tuple[tuple[str, str], ...] = ()


# ----------------------------------------------------------------------------- training
def run_dir(workdir: str, model: Model, seed: int) -> str:
  """DIR/runs/<model>-seed<k>: a unique folder name (transfer rows are named by it)."""
  return os.path.join(workdir, 'runs', f'{model.name}-seed{seed + model.seed_offset}')


def train_config_flags(model: Model, scale: Scale, seed: int,
                       extra: tuple[tuple[str, str], ...] = ()) -> list[str]:
  """train.py's --config flags for one model: the scale's config, the method, the scale's
  overrides, the row's (they win over the scale's), the user's `extra`, the seed."""
  overrides = (('method', model.method),) + scale.train_overrides + model.overrides + extra + (
      ('seed', str(seed + model.seed_offset)),)
  return [f'--config={scale.config}'] + [f'--config.{k}={v}' for k, v in overrides]


def command_line(script: str, flags: list[str]) -> str:
  """The shell command, quoted where a shell needs it (`(3,)`, spaces)."""
  return shlex.join(['python', script] + flags)


def config_from_flags(config_flags_list: list[str]):
  """The ConfigDict train.py would build from these flags (ml_collections' own parser)."""
  from absl import flags
  from ml_collections import config_flags
  if REPO_ROOT not in sys.path:  # the config files import `configs.common`
    sys.path.insert(0, REPO_ROOT)
  argv = ['train.py'] + [
      f'--config={os.path.join(REPO_ROOT, f[len("--config="):])}' if f.startswith('--config=')
      else f for f in config_flags_list]
  flag_values = flags.FlagValues()
  config_flags.DEFINE_config_file('config', None, 'Training config file.',
                                  flag_values=flag_values, lock_config=True, sys_argv=argv)
  flag_values(argv)
  return flag_values.config


# Fields that say where this machine keeps the data, not what the run is.
_MACHINE_FIELDS = ('data.manual_dir', 'data.tfds_data_dir')


def _flatten(tree, prefix: str = '') -> dict:
  if not isinstance(tree, dict):
    return {prefix: tree}
  flat = {}
  for key, value in tree.items():
    flat.update(_flatten(value, f'{prefix}{key}.' if isinstance(value, dict) else prefix + key))
  return flat


# Sections that only the generator methods (l2lda, l2l) read.
_GENERATOR_SECTIONS = ('generator.', 'l2lda_run.')


def _base_defaults() -> dict:
  if REPO_ROOT not in sys.path:
    sys.path.insert(0, REPO_ROOT)
  from configs import common
  return _flatten(json.loads(common.base_config().to_json_best_effort()))


def config_differences(recorded: dict, expected: dict) -> list[str]:
  """The fields in which a run's config.json differs from the config asked for, leaving out
  what cannot change the run: where the machine keeps its data, the generator's sections
  for a method without a generator, and a field the run's config.json lacks (added to the
  code after it ran) whose asked value is the field's default, the behaviour every run had
  before the field existed."""
  a, b = _flatten(recorded), _flatten(expected)
  defaults = _base_defaults()
  uses_generator = b.get('method') in ('l2lda', 'l2l')

  def matters(key: str) -> bool:
    if key in _MACHINE_FIELDS:
      return False
    if not uses_generator and key.startswith(_GENERATOR_SECTIONS):
      return False
    return not (key not in a and key in defaults and b.get(key) == defaults[key])

  return sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k) and matters(k))


def recorded_config_json(config) -> dict:
  """The config.json train.py writes for `config` (resolved run length, absolute paths)."""
  from l2lda_jax import train
  resolved = train.portable_config(train.resolve_run_length(config))
  return json.loads(resolved.to_json_best_effort())


@dataclasses.dataclass
class TrainedModel:
  model: Model
  seed: int  # the seed index k (the run's config.seed is k + model.seed_offset)
  directory: str
  command: str
  results: dict  # the run's results.json


def ensure_trained(model: Model, seed: int, run: Reproduction) -> TrainedModel:
  """Trains `model` with `train.py`'s code unless DIR already holds it (results.json);
  an interrupted run resumes from its checkpoints. A run of another config is an error."""
  directory = run_dir(run.workdir, model, seed)
  flags = train_config_flags(model, run.scale, seed, run.overrides)
  command = command_line('train.py', flags + [f'--workdir={directory}'])
  config = config_from_flags(flags)
  recorded = read_json_object(os.path.join(directory, 'config.json'))
  if recorded is not None:
    differ = config_differences(recorded, recorded_config_json(config))
    if differ:
      raise ReproduceError(
          f'{directory} holds a run of another config (it differs in {", ".join(differ)}); '
          f'remove it or use another --workdir')
  results = read_json_object(os.path.join(directory, 'results.json'))
  if recorded is not None and results is not None:
    run.log(f'already trained: {model.name} seed {seed} ({directory})')
    return TrainedModel(model, seed, directory, command, results)
  run.log(('resuming: ' if recorded is not None else 'training: ') + command)
  from l2lda_jax import train
  results = train.train_and_evaluate(config, directory)
  return TrainedModel(model, seed, directory, command, results)


# ----------------------------------------------------------------------------- evaluation
@dataclasses.dataclass(frozen=True)
class EvalJob:
  """One evaluate.py run: its flags (EvalOptions' field names and values) and --output."""
  values: tuple[tuple[str, object], ...]
  output: str

  @property
  def command(self) -> str:
    def text(value):
      return ','.join(value) if isinstance(value, (list, tuple)) else str(value)
    flags = [f'--{k}={text(v)}' for k, v in self.values] + [f'--output={self.output}']
    return command_line('evaluate.py', flags)


def _generator_values(scale: Scale) -> tuple:
  return (('generator_steps', scale.generator_steps),
          ('generator_draws', scale.generator_draws),
          ('generator_unroll_steps', scale.generator_unroll_steps))


def attack_values(attack: str, scale: Scale) -> tuple:
  """The flags an attack needs beyond --attacks (generator training, AdvGAN / GAP recipe)."""
  if attack in ('l2lda', 'l2l'):
    return _generator_values(scale)
  if attack in ('advgan', 'gap') and scale.generative_config_variant:
    return (('generative_config_variant', scale.generative_config_variant),)
  return ()


def _common_values(directory: str, scale: Scale) -> tuple:
  return (('workdir', directory), ('num_examples', scale.num_examples),
          ('batch_size', scale.batch_size))


def attack_job(directory: str, attack: str, scale: Scale) -> EvalJob:
  """`evaluate.py --attacks=<attack>` on one model; reused by every table with the column."""
  name = scale.attack(attack)
  return EvalJob(_common_values(directory, scale) + (('attacks', name),)
                 + attack_values(name, scale),
                 os.path.join(directory, 'reproduce', f'{name}.json'))


def transfer_job(directory: str, attack: str, surrogate_dirs: list[str], scale: Scale,
                 generator_cache: str) -> EvalJob:
  """`evaluate.py --attacks=transfer`: `attack` run on each surrogate, fed to the model.
  A generator attack is trained once per surrogate, in `generator_cache`, for every row."""
  name = scale.attack(attack)
  cache = (('transfer_generator_cache', generator_cache),) if name in ('l2lda', 'l2l') else ()
  return EvalJob(_common_values(directory, scale)
                 + (('attacks', 'transfer'), ('surrogates', tuple(surrogate_dirs)),
                    ('transfer_attack', name)) + attack_values(name, scale) + cache,
                 os.path.join(directory, 'reproduce', f'transfer-{name}.json'))


def figure2_job(directory: str, figures_dir: str, scale: Scale) -> EvalJob:
  """Figure 2 of one classifier: PGD, L2L-DA and L2L* loss per attack step."""
  return EvalJob(_common_values(directory, scale)
                 + (('attacks', 'l2lda,l2l'),) + _generator_values(scale)
                 + (('figures_dir', figures_dir), ('figure_examples', scale.figure_examples),
                    ('check_pgd_steps', scale.check_pgd_steps)),
                 os.path.join(directory, 'reproduce', 'figure2.json'))


def eval_options(job: EvalJob, progress: bool):
  """The EvalOptions evaluate.py builds from the job's flags."""
  from l2lda_jax import robustness
  from l2lda_jax.attack_specs import parse_attacks
  values = dict(job.values)
  values['attacks'] = parse_attacks(values['attacks'])
  if 'surrogates' in values:
    values['surrogates'] = list(values['surrogates'])
  return robustness.EvalOptions(progress=progress, **values)


def command_in_workdir(report: dict, workdir: str) -> Optional[str]:
  """The report's command as it reads with its reproduction's folder at `workdir`, so that a
  folder moved or copied elsewhere (committed, cloned) keeps its evaluations."""
  command, recorded_workdir = report.get('command'), report.get('reproduce_workdir')
  if command is None or not recorded_workdir:
    return command
  return command.replace(recorded_workdir, workdir)


def ensure_evaluated(job: EvalJob, run: Reproduction) -> dict:
  """The job's report: reused when its --output holds a finished report of the same
  command, resumed when it holds an interrupted one, else run with evaluate.py's code."""
  from l2lda_jax import robustness
  previous = read_json_object(job.output)
  same = previous is not None and command_in_workdir(previous, run.workdir) == job.command
  if same and previous.get('complete'):
    return previous
  run.log(('resuming: ' if same else 'evaluating: ') + job.command)
  options = eval_options(job, run.progress)
  robustness.validate_options(options)
  options.previous_report = previous if same else None
  save = lambda report: write_json_atomic(
      dict(report, command=job.command, reproduce_workdir=run.workdir), job.output)
  report = robustness.evaluate(options, log=run.log, on_row=save)
  save(report)
  return read_json_object(job.output)


def row_correct(report: dict, row_name: str) -> tuple[float, np.ndarray]:
  """(accuracy, per-example correctness) of one row of an evaluate.py report."""
  from l2lda_jax.robustness import unpack_correct
  rows = {r['attack']: r for r in report['rows']}
  if row_name not in rows:
    raise ReproduceError(f'{report.get("command")}: no row {row_name!r} in its report')
  return rows[row_name]['accuracy'], unpack_correct(report['per_example_correct'][row_name],
                                                    report['num_examples'])


# ----------------------------------------------------------------------------- tables
AUTOATTACK_LABEL = 'AutoAttack'
MIN_LABEL = 'Min'
WORST_LABEL = 'per-example worst case'


def autoattack_row(scale: Scale) -> str:
  """The report row of AutoAttack's column: its last stage's (the robust accuracy after
  every stage), or the one attack that stands for it at this scale."""
  name = scale.attack('autoattack')
  return 'autoattack square' if name == 'autoattack' else name


def column_source(column: Column, trained: TrainedModel, surrogates: dict, run: Reproduction):
  """(job, row name) whose report row is this column for this model."""
  scale = run.scale
  if column.surrogate is None:
    job = attack_job(trained.directory, column.attack, scale)
    return job, scale.attack(column.attack)
  surrogate_dirs = [surrogates[m.name].directory for m in paper_tables.TABLE3_SURROGATES]
  job = transfer_job(trained.directory, column.attack, surrogate_dirs, scale,
                     os.path.join(run.workdir, 'transfer_generators'))
  surrogate_dir = surrogates[column.surrogate.name].directory
  return job, (f'transfer {scale.attack(column.attack)} from '
               f'{os.path.basename(os.path.normpath(surrogate_dir))}')


def model_cells(columns: tuple, trained: TrainedModel, surrogates: dict, autoattack: bool,
                run: Reproduction, jobs: list) -> dict:
  """label -> accuracy % for one trained model: the columns, the paper's Min (the lowest
  attack column), AutoAttack, and the per-example worst case (correct clean and under
  every column: the image survives every attack run)."""
  values, correct, scale = {}, [], run.scale
  sources = [(c.label, column_source(c, trained, surrogates, run)) for c in columns]
  if not any(c.attack == 'clean' for c in columns):  # the worst case counts clean errors
    sources.append((None, (attack_job(trained.directory, 'clean', scale), 'clean')))
  if autoattack:
    sources.append((AUTOATTACK_LABEL, (attack_job(trained.directory, 'autoattack', scale),
                                       autoattack_row(scale))))
  for label, (job, row_name) in sources:
    if job.command not in jobs:
      jobs.append(job.command)
    accuracy, per_example = row_correct(ensure_evaluated(job, run), row_name)
    correct.append(per_example)
    if label is not None:
      values[label] = 100 * accuracy
  attacked = [values[c.label] for c in columns if c.attack != 'clean']
  values[MIN_LABEL] = min(attacked)
  values[WORST_LABEL] = 100 * float(np.mean(np.logical_and.reduce(correct)))
  return values


def table_columns(table: Table, section) -> list[str]:
  return ([c.label for c in section.columns] + [MIN_LABEL]
          + ([AUTOATTACK_LABEL] if table.autoattack else []) + [WORST_LABEL])


def paper_cell(row, section, label: str) -> tuple[Optional[float], bool]:
  """(the paper's number for this cell, whether it comes from elsewhere: SPEC section 7)."""
  labels = [c.label for c in section.columns] + [MIN_LABEL]
  if label in labels:
    return row.paper[labels.index(label)], False
  if label == AUTOATTACK_LABEL and row.model.name in paper_tables.AUTOATTACK_INDEPENDENT:
    return paper_tables.AUTOATTACK_INDEPENDENT[row.model.name], True
  return None, False


def examples_text(scale: Scale) -> str:
  return (f'the first {scale.num_examples} test images' if scale.num_examples
          else 'the whole test set')


def scale_notes(scale: Scale, attacks: list[str]) -> list[str]:
  """What differs from the paper at this scale, in the table's own words."""
  notes = [f'Models: `train.py --config={scale.config}` with each row\'s method and '
           f'overrides (commands below); the paper trains 100,000 steps of batch 100.']
  renamed = [f'{a} ran as {scale.attack(a)}' for a in attacks if scale.attack(a) != a]
  if renamed:
    notes.append('At this scale the columns\' attacks are cut: ' + ', '.join(renamed) + '.')
  notes.append(f'L2L-DA / L2L* attack columns: a generator trained {scale.generator_steps} '
               f'steps against the frozen classifier, {scale.generator_draws} z draws per '
               f'image, T = {scale.generator_unroll_steps} (evaluate.py).')
  return notes


def reproduce_table(table: Table, run: Reproduction) -> dict:
  """Trains and evaluates everything `table` needs; returns the table's result dict. Each
  row's model is trained just before its columns are evaluated (surrogates before the first
  row that attacks through them), so a long reproduction has its first rows early."""
  scale, seeds = run.scale, run.seeds
  trained = {}

  def trained_model(model: Model, k: int) -> TrainedModel:
    if (model.name, k) not in trained:
      trained[(model.name, k)] = ensure_trained(model, k, run)
    return trained[(model.name, k)]

  surrogate_models = list(dict.fromkeys(c.surrogate for s in table.sections for c in s.columns
                                        if c.surrogate))
  jobs, sections = [], []
  for section in table.sections:
    labels = table_columns(table, section)
    rows = []
    for row in section.rows:
      per_seed = []
      for k in range(seeds):
        surrogates = {m.name: trained_model(m, k) for m in surrogate_models}
        per_seed.append(model_cells(section.columns, trained_model(row.model, k), surrogates,
                                    table.autoattack, run, jobs))
      cells = {}
      for label in labels:
        paper, independent = paper_cell(row, section, label)
        cells[label] = {'ours': [values[label] for values in per_seed], 'paper': paper,
                        'paper_independent': independent}
      rows.append({'label': row.label, 'model': row.model.name, 'cells': cells})
    sections.append({'title': section.title, 'columns': labels, 'rows': rows})
  attacks = list(dict.fromkeys([c.attack for s in table.sections for c in s.columns]
                               + (['autoattack'] if table.autoattack else [])))
  notes = scale_notes(scale, attacks) + [
      f'{MIN_LABEL}: the lowest of the paper\'s attack columns, as the paper\'s Min. '
      f'{WORST_LABEL}: an image counts only if it is classified correctly clean and under '
      f'every column' + (' and every AutoAttack stage' if table.autoattack else '')
      + f'; the paper has no such number ({report_lib.NO_PAPER_NUMBER}).']
  if table.autoattack:
    notes.append(f'{AUTOATTACK_LABEL}: the standard version (APGD-CE, APGD-T, FAB-T, Square), '
                 f'not in the paper; {report_lib.INDEPENDENT_MARK}: an independent AutoAttack '
                 f'evaluation of the authors\' model (SPEC section 7), not the paper\'s.')
  else:
    notes.append('Surrogates A, B, C are trained apart from the rows\' models (seed + '
                 f'{paper_tables.SURROGATE_A.seed_offset}), as the paper\'s are. AutoAttack, '
                 'white-box, is in Table 2 for these models.')
  return {'target': table.name, 'title': f'{table.caption.split(":")[0]} reproduced',
          'caption': table.caption, 'scale': scale.name, 'seeds': seeds,
          'num_examples': scale.num_examples, 'examples_text': examples_text(scale),
          'notes': notes, 'sections': sections, 'models': model_records(trained),
          'evaluation_commands': jobs}


def train_seconds(trained: TrainedModel) -> Optional[float]:
  """The model's training wall time: its one process's (results.json) or, for a run killed
  and resumed, every process's working time read from its TensorBoard events."""
  if trained.results.get('resumed_from_step') is None:
    return trained.results.get('train_seconds_this_process')
  from l2lda_jax import summaries
  return summaries.training_seconds(trained.directory)


def model_records(trained: dict) -> list[dict]:
  """Each model's command, best checkpoint and training wall time."""
  records = []
  for t in trained.values():
    best = t.results.get('best_on_validation') or t.results.get('last') or {}
    records.append({'name': t.model.name, 'seed': t.seed + t.model.seed_offset,
                    'directory': t.directory, 'command': t.command,
                    'best_step': best.get('step'), 'train_seconds': train_seconds(t),
                    'resumed_from_step': t.results.get('resumed_from_step')})
  return records


# ----------------------------------------------------------------------------- Figure 2
def final_losses(figure_json: dict) -> dict:
  """attack (PGD, L2L-DA, L2L*) -> mean over images of the max over draws of the
  cross-entropy after the attack's last step (figures.loss_curves' curves, named
  'PGD-10 (10 restarts)', 'L2L-DA (10 z draws)', 'L2L* (one shot)')."""
  losses = {}
  for name, curve in figure_json['curves'].items():
    attack = 'PGD' if name.startswith('PGD-') else name.split(' ')[0]
    losses[attack] = curve['mean_max'][-1]
  return losses


FIGURE2_COLUMNS = ('L2L-DA', 'PGD', 'L2L*')


def reproduce_figure2(run: Reproduction) -> dict:
  """Figure 2 for the PGD10 and L2L-DA models: the loss curves (PNG) and their last step."""
  scale, workdir = run.scale, run.workdir
  jobs, rows, panels, models = [], [], [], []
  for panel in paper_tables.FIGURE2:
    per_seed, pngs = [], []
    for k in range(run.seeds):
      trained = ensure_trained(panel.model, k, run)
      models.append(trained)
      figures_dir = os.path.join(workdir, 'figure2', os.path.basename(trained.directory))
      job = figure2_job(trained.directory, figures_dir, scale)
      jobs.append(job.command)
      ensure_evaluated(job, run)
      per_seed.append(final_losses(read_json_object(os.path.join(figures_dir, 'figure2.json'))))
      pngs.append((k, os.path.relpath(os.path.join(figures_dir, 'figure2.png'), workdir)))
    cells = {label: {'ours': [losses[label] for losses in per_seed],
                     'paper': panel.paper_l2lda_final_loss if label == 'L2L-DA' else None}
             for label in FIGURE2_COLUMNS}
    rows.append({'label': panel.label, 'model': panel.model.name, 'cells': cells})
    panels.append({'label': panel.label, 'pngs': pngs})
  columns = [f'{c} loss at the last step' for c in FIGURE2_COLUMNS]
  for row in rows:
    row['cells'] = dict(zip(columns, row['cells'].values()))
  notes = [
      f'Each cell: ours (paper): the cross-entropy after the attack\'s last step, per image '
      f'the max over {scale.generator_draws} draws (z for L2L-DA, random restarts for PGD; '
      f'L2L* is one deterministic shot), averaged over the first {scale.figure_examples} '
      f'test images.',
      f'The paper\'s Figure 2 attacks {paper_tables.FIGURE2_DATASET_OF_PAPER} classifiers and '
      f'states only the L2L-DA losses (1.64 and 1.90, Section 4.3); these are the MNIST models '
      f'of Table 2 at scale `{scale.name}`, so its numbers are a scale to read ours against.',
      f'Models: `train.py --config={scale.config}` with each row\'s method (commands below).',
  ]
  return {'target': 'figure2', 'title': 'Figure 2 reproduced',
          'caption': 'Figure 2: classification loss per attack step on (a) a PGD10 and (b) an '
                     'L2L-DA adversarially trained classifier, under PGD, L2L-DA and L2L*.',
          'scale': scale.name, 'seeds': run.seeds, 'notes': notes,
          'sections': [{'title': 'Figure 2', 'columns': columns, 'rows': rows}],
          'panels': panels, 'models': model_records({i: t for i, t in enumerate(models)}),
          'evaluation_commands': jobs}


# ----------------------------------------------------------------------------- main
def override_notes(run: Reproduction) -> list[str]:
  if not run.overrides:
    return []
  flags = ' '.join(f'`--config.{k}={v}`' for k, v in run.overrides)
  return [f'Every model of this table also has {flags} (--override): the same for every row.']


def parse_overrides(texts) -> tuple[tuple[str, str], ...]:
  """['l2lda_run.steps=6000', ...] -> (('l2lda_run.steps', '6000'), ...)."""
  pairs = []
  for text in texts:
    field, equals, value = text.partition('=')
    field = field.strip().removeprefix('--').removeprefix('config.')
    if not equals or not field:
      raise ReproduceError(f'--override: {text!r} is not FIELD=VALUE (e.g. l2lda_run.steps=6000)')
    pairs.append((field, value))
  return tuple(pairs)


def reproduce(target: str, scale_name: str, workdir: str, seeds: int = 1,
              log: Callable = print, progress: bool = False, overrides=()) -> str:
  """Runs one target end to end; returns the path of DIR/<target>.md. `overrides`
  ('FIELD=VALUE') go to every model's config, after the scale's and the row's."""
  if target not in paper_tables.TARGETS:
    raise ReproduceError(f'--target: {target!r} is not one of {", ".join(paper_tables.TARGETS)}')
  if scale_name not in SCALES:
    raise ReproduceError(f'--scale: {scale_name!r} is not one of {", ".join(SCALES)}')
  if seeds < 1:
    raise ReproduceError(f'--seeds: must be at least 1, got {seeds}')
  run = Reproduction(SCALES[scale_name], workdir, seeds, log, progress,
                     parse_overrides(overrides))
  os.makedirs(workdir, exist_ok=True)
  start = time.time()
  if target == 'figure2':
    result = reproduce_figure2(run)
    result['notes'] += override_notes(run)
    markdown = report_lib.figure2_markdown(result)
  else:
    result = reproduce_table(paper_tables.TABLES[target], run)
    result['notes'] += override_notes(run)
    result['png'] = f'{target}.png'
    report_lib.plot_ours_against_paper(result, os.path.join(workdir, result['png']))
    markdown = report_lib.table_markdown(result)
  result['wall_seconds_this_process'] = time.time() - start
  write_json_atomic(result, os.path.join(workdir, f'{target}.json'))
  path = os.path.join(workdir, f'{target}.md')
  with open(path, 'w') as f:
    f.write(markdown)
  log(f'{target} written to {path} ({time.time() - start:.0f} s)')
  return path


def main(argv):
  from absl import flags, logging
  if len(argv) > 1:
    raise ValueError(f'unexpected arguments: {argv[1:]}')
  options = flags.FLAGS
  from l2lda_jax import console, host_memory
  console.quiet_libraries(options.verbose)
  host_memory.keep_freed_memory()  # before JAX or TensorFlow start threads
  if not os.environ.get('JAX_COMPILATION_CACHE_DIR'):
    # Many models share programs (each attack's, each method's step): compile each once,
    # also across reruns of an interrupted reproduction.
    import jax
    jax.config.update('jax_compilation_cache_dir',
                      os.path.join(os.path.abspath(options.workdir), 'xla_cache'))
  from l2lda_jax.checkpoint import CheckpointError
  from l2lda_jax.config_validation import ConfigError
  from l2lda_jax.data import DataError
  from l2lda_jax.robustness import EvaluationError
  from l2lda_jax.train import TrainingDiverged
  try:
    path = reproduce(options.target, options.scale, options.workdir, options.seeds,
                     log=logging.info, progress=sys.stderr.isatty(),
                     overrides=options.override)
  except (ReproduceError, ConfigError, DataError, TrainingDiverged, CheckpointError,
          EvaluationError) as e:
    sys.exit(f'error: {e}')
  print(open(path).read())


def _define_flags():
  from absl import flags
  flags.DEFINE_enum('target', None, list(paper_tables.TARGETS), 'Which table or figure.')
  flags.DEFINE_enum('scale', 'cpu', list(SCALES), 'smoke (tests), cpu (each method\'s '
                    ':cpu recipe) or paper (configs/mnist.py, for a GPU or TPU).')
  flags.DEFINE_string('workdir', None, 'Folder for every model, report and table.')
  flags.DEFINE_integer('seeds', 1, 'Train each model this many times (seeds 0..N-1); cells '
                       'give mean +- std.')
  flags.DEFINE_multi_string('override', [], 'FIELD=VALUE for every model\'s config (after '
                            'the scale\'s and the row\'s), e.g. a shorter budget for all of '
                            'Table 1: --override=l2lda_run.steps=6000. Repeatable; stated in '
                            'the table.')
  flags.DEFINE_boolean('verbose', False, 'Also print the libraries\' INFO lines.')
  flags.mark_flags_as_required(['target', 'workdir'])


if __name__ == '__main__':
  from absl import app
  _define_flags()
  app.run(main)
