"""`python -m l2lda_jax.reproduce` at smoke scale: every target end to end on mock data.

One workdir for all four targets, as a user would run them: Table 3's rows and Figure 2's
classifiers are Table 2's models, and Table 1 shares two of them, so each model is
trained once. Those tests are marked slow (L2LDA_SLOW_TESTS=1): on 2 idle cores the four
targets take many minutes even at smoke scale, most of it compilation.
"""

import json
import os
import re
import shutil
import subprocess

import pytest

from conftest import learnable_mnist_mock

from l2lda_jax import paper_tables, reproduce
from l2lda_jax import reproduction_report as report_lib

TARGETS = ('table2', 'table3', 'table1', 'figure2')  # the order a user would pick
CELL = re.compile(r'^(?P<ours>-?\d+\.\d+)(?: \u00b1 \d+\.\d+)? '
                  r'\((?P<paper>\d+\.\d+)?(?:\u2020|n/a)?\)$')


@pytest.fixture(scope='module')
def reproduction(tmp_path_factory):
  """(workdir, log lines): the four targets at smoke scale, then table2 once more."""
  workdir = str(tmp_path_factory.mktemp('reproduction'))
  messages = []
  environment = pytest.MonkeyPatch()
  environment.delenv('L2LDA_MANUAL_DIR', raising=False)  # the mock data, not a local copy
  try:
    with learnable_mnist_mock():
      for target in TARGETS:
        reproduce.reproduce(target, 'smoke', workdir, log=messages.append)
      messages.append('--- rerun')
      reproduce.reproduce('table2', 'smoke', workdir, log=messages.append)
  finally:
    environment.undo()
  return workdir, messages


def markdown_tables(text: str) -> list[list[list[str]]]:
  """Every markdown table of `text` whose header starts 'Attack \\ Defense', as rows of
  cells (header first, the |---| line dropped)."""
  tables, current = [], None
  for line in text.splitlines():
    if line.startswith('| Attack \\ Defense |'):
      current = []
      tables.append(current)
    elif not line.startswith('|'):
      current = None
    if current is not None and not line.startswith('|---'):
      current.append([cell.strip() for cell in line.strip('|').split(' | ')])
  return tables


def parse_cell(text: str) -> tuple[float, str]:
  match = CELL.match(text)
  assert match, f'not "ours (paper)": {text!r}'
  return float(match['ours']), match['paper']


@pytest.mark.slow  # ~15 models trained and ~100 evaluations, even at smoke scale
@pytest.mark.parametrize('name', ['table1', 'table2', 'table3'])
def test_each_table_has_the_papers_rows_and_columns_and_a_number_in_every_cell(
    reproduction, name):
  workdir, _ = reproduction
  table = paper_tables.TABLES[name]
  with open(os.path.join(workdir, f'{name}.md')) as f:
    written = markdown_tables(f.read())
  assert len(written) == len(table.sections)
  for lines, section in zip(written, table.sections):
    header, rows = lines[0], lines[1:]
    assert header == (['Attack \\ Defense'] + [c.label for c in section.columns] + ['Min']
                      + (['AutoAttack'] if table.autoattack else [])
                      + ['per-example worst case'])
    assert [r[0] for r in rows] == [r.label for r in section.rows]
    for cells, row in zip(rows, section.rows):
      assert len(cells) == len(header)
      parsed = [parse_cell(c) for c in cells[1:]]
      assert all(0.0 <= ours <= 100.0 for ours, _ in parsed)
      # The paper's numbers, Min included, beside ours in the paper's columns.
      assert [float(paper) for _, paper in parsed[:len(row.paper)]] == list(row.paper)
  assert os.path.getsize(os.path.join(workdir, f'{name}.png')) > 1000


@pytest.mark.slow  # ~15 models trained and ~100 evaluations, even at smoke scale
@pytest.mark.parametrize('name', ['table1', 'table2', 'table3'])
def test_min_and_worst_case_bound_every_attack_column(reproduction, name):
  workdir, _ = reproduction
  with open(os.path.join(workdir, f'{name}.json')) as f:
    result = json.load(f)
  attack_labels = {c.label for s in paper_tables.TABLES[name].sections for c in s.columns
                   if c.attack != 'clean'}
  for section in result['sections']:
    for row in section['rows']:
      ours = {label: cell['ours'][0] for label, cell in row['cells'].items()}
      assert ours['Min'] == min(ours[label] for label in attack_labels)
      assert ours['per-example worst case'] <= min(v for k, v in ours.items()
                                                   if k != 'per-example worst case')


@pytest.mark.slow  # ~15 models trained and ~100 evaluations, even at smoke scale
def test_figure2_has_both_panels_their_pngs_and_the_papers_losses(reproduction):
  workdir, _ = reproduction
  with open(os.path.join(workdir, 'figure2.md')) as f:
    text = f.read()
  (lines,) = markdown_tables(text)
  assert [r[0] for r in lines[1:]] == [p.label for p in paper_tables.FIGURE2]
  for cells, panel in zip(lines[1:], paper_tables.FIGURE2):
    parsed = [parse_cell(c) for c in cells[1:]]
    assert [p for _, p in parsed] == [f'{panel.paper_l2lda_final_loss:.2f}', None, None]
    assert all(ours > 0 for ours, _ in parsed)  # cross-entropy after an attack
  pngs = re.findall(r'\]\((figure2/[^)]+\.png)\)', text)
  assert len(pngs) == 2
  assert all(os.path.getsize(os.path.join(workdir, p)) > 1000 for p in pngs)


@pytest.mark.slow  # ~15 models trained and ~100 evaluations, even at smoke scale
def test_each_model_is_trained_once_by_an_ordinary_command_and_reruns_reuse_everything(
    reproduction):
  workdir, messages = reproduction
  first, rerun = messages[:messages.index('--- rerun')], messages[messages.index('--- rerun'):]
  trained = [m[len('training: '):] for m in first if m.startswith('training: ')]
  needed = {m for t in paper_tables.TABLES.values() for m in t.models()}
  assert len(trained) == len(set(trained)) == len(needed)
  assert all(c.startswith('python train.py --config=configs/mnist.py:smoke --config.method=')
             and ' --workdir=' in c for c in trained)
  assert any('already trained: plain seed 0' in m for m in first)  # Table 3 reused Table 2's
  assert not [m for m in rerun if m.startswith(('training:', 'evaluating:', 'resuming:'))]
  with open(os.path.join(workdir, 'table3.md')) as f:
    text = f.read()
  for command in trained:
    if '/runs/surrogate_' in command:
      assert command in text
  assert re.search(r'python evaluate\.py .*--attacks=transfer --surrogates=\S+,\S+,\S+ '
                   r'--transfer_attack=l2lda', text)
  # Table 3's L2L-DA generators: trained once per surrogate, read back for the other rows.
  reads = [m for m in first if 'l2lda: using the generator trained earlier' in m]
  rows = len(paper_tables.TABLE3.sections[0].rows)
  assert len(reads) == (rows - 1) * len(paper_tables.TABLE3_SURROGATES)
  assert all(os.path.join(workdir, 'transfer_generators') in m for m in reads)


def test_cells_show_mean_and_sample_std_over_seeds():
  assert report_lib.ours_text([97.0]) == '97.00'
  assert report_lib.ours_text([96.0, 98.0]) == '97.00 \u00b1 1.41'
  assert report_lib.cell_text({'ours': [50.0], 'paper': None}) == '50.00 (n/a)'
  assert report_lib.cell_text({'ours': [50.0], 'paper': 87.99, 'paper_independent': True}) == (
      '50.00 (87.99\u2020)')


def test_a_rows_overrides_come_after_the_scales_and_reach_the_config():
  flags = reproduce.train_config_flags(paper_tables.L2LDA_R0_D0, reproduce.SCALES['smoke'], 1)
  assert flags[0] == '--config=configs/mnist.py:smoke'
  assert flags.index('--config.generator.steps=1') > flags.index('--config.train.steps=4')
  config = reproduce.config_from_flags(flags)
  assert (config.method, config.generator.steps, config.generator.diversity_weight,
          config.seed, config.train.steps) == ('l2lda', 1, 0.0, 1, 4)
  surrogate = reproduce.train_config_flags(paper_tables.SURROGATE_C, reproduce.SCALES['cpu'], 0)
  assert surrogate[-1] == '--config.seed=100'
  assert surrogate[0] == '--config=configs/mnist.py:cpu'


def test_overrides_reach_every_models_config_after_the_rows_and_bad_ones_are_one_error():
  overrides = reproduce.parse_overrides(['l2lda_run.steps=9000',
                                         '--config.generator.steps=2'])
  assert overrides == (('l2lda_run.steps', '9000'), ('generator.steps', '2'))
  # The user's override wins over the row's own (R-D- sets generator.steps=1).
  flags = reproduce.train_config_flags(paper_tables.L2LDA_R0_D0, reproduce.SCALES['cpu'], 0,
                                       overrides)
  config = reproduce.config_from_flags(flags)
  assert (config.l2lda_run.steps, config.generator.steps) == (9000, 2)
  with pytest.raises(reproduce.ReproduceError, match='--override'):
    reproduce.parse_overrides(['l2lda_run.steps'])


def test_a_config_differs_only_where_the_run_could_have_run_differently():
  """A run made before a field existed (at its default), a PGD run with another generator
  section and another data folder are the run asked for; anything else is not."""
  asked = {'method': 'pgd', 'train': {'steps': 100, 'grad_align_weight': 0.0},
           'generator': {'diversity_weight': 0.5}, 'data': {'manual_dir': '/here'}}
  older = {'method': 'pgd', 'train': {'steps': 100}, 'generator': {'diversity_weight': 0.02},
           'data': {'manual_dir': '/there'}}
  assert reproduce.config_differences(older, asked) == []
  assert reproduce.config_differences(older, {**asked, 'method': 'l2lda'}) == [
      'generator.diversity_weight', 'method']
  penalised = {**asked, 'train': {'steps': 100, 'grad_align_weight': 0.5}}
  assert reproduce.config_differences(older, penalised) == ['train.grad_align_weight']
  longer = {**asked, 'train': {'steps': 200, 'grad_align_weight': 0.0}}
  assert reproduce.config_differences(older, longer) == ['train.steps']


def test_only_generator_transfer_jobs_name_the_generator_cache():
  scale, surrogates = reproduce.SCALES['cpu'], ['/w/runs/a', '/w/runs/b']
  learned = reproduce.transfer_job('/w/runs/m', 'l2lda', surrogates, scale, '/w/generators')
  gradient = reproduce.transfer_job('/w/runs/m', 'pgd10', surrogates, scale, '/w/generators')
  assert ' --transfer_generator_cache=/w/generators' in learned.command
  assert 'generator' not in gradient.command
  assert learned.output != gradient.output


def test_a_reproduction_folder_moved_elsewhere_keeps_its_finished_evaluations(tmp_path):
  """A finished report is reused from a copy of the folder (committed, cloned): its command
  is compared with the folder where it now is, not where it was written."""
  old, new = '/elsewhere/repro', str(tmp_path / 'repro')
  scale = reproduce.SCALES['smoke']
  written = reproduce.attack_job(reproduce.run_dir(old, paper_tables.PLAIN, 0), 'fgsm', scale)
  job = reproduce.attack_job(reproduce.run_dir(new, paper_tables.PLAIN, 0), 'fgsm', scale)
  assert written.command != job.command
  report = {'command': written.command, 'reproduce_workdir': old, 'complete': True,
            'rows': []}
  os.makedirs(os.path.dirname(job.output))
  with open(job.output, 'w') as f:
    json.dump(report, f)
  messages = []
  run = reproduce.Reproduction(scale, new, log=messages.append)
  assert reproduce.ensure_evaluated(job, run) == report
  assert messages == []  # neither evaluated nor resumed
  # Written by another reproduction folder, the same command is another evaluation.
  assert reproduce.command_in_workdir(report, '/a/third/place') != job.command
  assert reproduce.command_in_workdir({'command': job.command}, old) == job.command


def _make_run(workdir, name: str, best: int, checkpoints: tuple[int, ...]) -> None:
  run = os.path.join(workdir, 'runs', name)
  for folder, steps in (('best', (best,)), ('checkpoints', checkpoints)):
    for step in steps:
      os.makedirs(os.path.join(run, folder, str(step)))
      with open(os.path.join(run, folder, str(step), 'state'), 'w') as f:
        f.write(f'{folder} {step}')
  with open(os.path.join(run, 'config.json'), 'w') as f:
    f.write('{}')


def _archive(source, destination) -> None:
  script = os.path.join(os.path.dirname(__file__), '..', 'bench', 'archive_reproduction.sh')
  subprocess.run(['bash', script, str(source), str(destination)], check=True)


def test_archiving_again_mirrors_the_newest_and_best_checkpoints(tmp_path):
  """bench/archive_reproduction.sh keeps per run the best and the newest checkpoint; a later
  copy into the same folder replaces both when training moved on, not adds to them."""
  source, archive = tmp_path / 'workdir', tmp_path / 'archive'
  _make_run(source, 'l2lda-seed0', best=2000, checkpoints=(1000, 2000))
  os.makedirs(source / 'xla_cache')
  _archive(source, archive)
  run = archive / 'runs' / 'l2lda-seed0'
  assert sorted(os.listdir(run / 'best')) == ['2000']
  assert sorted(os.listdir(run / 'checkpoints')) == ['2000']
  assert not os.path.exists(archive / 'xla_cache')
  shutil.rmtree(source / 'runs')  # training went on: orbax replaced both folders' steps
  _make_run(source, 'l2lda-seed0', best=9000, checkpoints=(8000, 9000))
  _archive(source, archive)
  assert sorted(os.listdir(run / 'best')) == ['9000']
  assert sorted(os.listdir(run / 'checkpoints')) == ['9000']
  assert (run / 'best' / '9000' / 'state').read_text() == 'best 9000'


@pytest.mark.parametrize('name', ['table2', 'table3'])
def test_each_rows_model_is_evaluated_before_the_next_is_trained(name, monkeypatch):
  """A reproduction of many hours has its first rows' numbers early: train a row, evaluate
  it, then the next; Table 3's surrogates are trained before the first row attacked through
  them, once."""
  events = []

  def fake_train(model, k, run):
    events.append(('train', model.name))
    return reproduce.TrainedModel(model, k, f'/runs/{model.name}', 'cmd', {})

  def fake_cells(columns, trained, surrogates, autoattack, run, jobs):
    assert all(('train', s) in events for s in surrogates)
    events.append(('evaluate', trained.model.name))
    return {label: 50.0 for label in reproduce.table_columns(
        paper_tables.TABLES[name], paper_tables.TABLES[name].sections[0])}

  monkeypatch.setattr(reproduce, 'ensure_trained', fake_train)
  monkeypatch.setattr(reproduce, 'model_cells', fake_cells)
  table = paper_tables.TABLES[name]
  reproduce.reproduce_table(table, reproduce.Reproduction(reproduce.SCALES['smoke'], '/w'))
  rows = [row.model.name for row in table.sections[0].rows]
  surrogates = [m.name for m in paper_tables.TABLE3_SURROGATES] if name == 'table3' else []
  expected = [('train', s) for s in surrogates]
  for row in rows:
    expected += [('train', row), ('evaluate', row)]
  assert events == expected
