"""The written side of a reproduction: a measured table, in the paper's layout, as markdown
and PNG, our number beside the paper's in every cell.

Input is a plain dict (the `<target>.json` that l2lda_jax.reproduce writes beside the
markdown): sections of rows whose cells hold our accuracy per seed and the paper's number.
Nothing here trains or attacks anything.
"""

import os
from typing import Optional, Sequence

import numpy as np

NO_PAPER_NUMBER = 'n/a'
INDEPENDENT_MARK = '\u2020'  # a reference number that is not the paper's own (SPEC section 7)


def mean_and_std(values: Sequence[float]) -> tuple[float, Optional[float]]:
  """Mean and sample standard deviation over seeds (None for a single seed)."""
  values = np.asarray(values, float)
  return float(values.mean()), (float(values.std(ddof=1)) if len(values) > 1 else None)


def ours_text(values: Sequence[float]) -> str:
  """'97.12' for one seed, '97.12 ± 0.40' (mean ± sample std) for several."""
  mean, std = mean_and_std(values)
  return f'{mean:.2f}' if std is None else f'{mean:.2f} \u00b1 {std:.2f}'


def paper_text(paper: Optional[float], independent: bool = False) -> str:
  if paper is None:
    return NO_PAPER_NUMBER
  return f'{paper:.2f}{INDEPENDENT_MARK if independent else ""}'


def cell_text(cell: dict) -> str:
  """One table cell: ours (paper)."""
  return (f"{ours_text(cell['ours'])} "
          f"({paper_text(cell.get('paper'), cell.get('paper_independent', False))})")


def section_markdown(section: dict) -> list[str]:
  """One sub-table as markdown lines: the paper's header, one line per defense."""
  header = ['Attack \\ Defense'] + list(section['columns'])
  lines = ['| ' + ' | '.join(header) + ' |', '|' + '---|' * len(header)]
  for row in section['rows']:
    cells = [cell_text(row['cells'][column]) for column in section['columns']]
    lines.append('| ' + ' | '.join([row['label']] + cells) + ' |')
  return lines


def table_markdown(result: dict) -> str:
  """The whole `<target>.md`: the sections, the scale, each model's command and wall time,
  and each evaluation's command."""
  seeds = result['seeds']
  lines = [f"# {result['title']}", '', result['caption'], '',
           f"Each cell: **ours (paper)**, accuracy %. Ours: scale `{result['scale']}`, "
           f"{result['examples_text']}, "
           + (f'mean \u00b1 sample std over {seeds} training seeds.' if seeds > 1
              else 'one training seed.'),
           ]
  lines += [f'- {note}' for note in result['notes']]
  for section in result['sections']:
    lines += ['', f"## {section['title']}", ''] + section_markdown(section)
  if result.get('png'):
    lines += ['', f"![ours against the paper, every cell]({result['png']})"]
  lines += ['', '## Models', '', '| model | seed | best checkpoint step | train wall s | command |',
            '|---|---|---|---|---|']
  for model in result['models']:
    seconds = model.get('train_seconds')
    resumed = ' (resumed; all processes, from its events)' if model.get(
        'resumed_from_step') is not None else ''
    lines.append(f"| {model['name']} | {model['seed']} | {model.get('best_step', '')} | "
                 f"{'' if seconds is None else f'{seconds:.0f}'}{resumed} | "
                 f"`{model['command']}` |")
  lines += ['', '## Evaluations', '', 'Each an ordinary `evaluate.py` run (from the repository '
            'root); its JSON report, per-example correctness included, is the `--output`.',
            '', '```'] + list(result['evaluation_commands']) + ['```', '']
  return '\n'.join(lines)


def plot_ours_against_paper(result: dict, path: str) -> None:
  """Every cell with a paper number as a point (paper, ours mean), the diagonal for
  agreement; one marker per section."""
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  fig, ax = plt.subplots(figsize=(5, 5))
  for section, marker in zip(result['sections'], 'osD^v'):
    points = [(cell['paper'], mean_and_std(cell['ours'])[0])
              for row in section['rows'] for cell in row['cells'].values()
              if cell.get('paper') is not None and not cell.get('paper_independent')]
    if points:
      paper, ours = zip(*points)
      ax.scatter(paper, ours, marker=marker, alpha=0.7, label=section['title'])
  ax.plot([0, 100], [0, 100], color='gray', linestyle=':', linewidth=1)
  ax.set_xlim(-2, 102)
  ax.set_ylim(-2, 102)
  ax.set_xlabel('paper, accuracy %')
  ax.set_ylabel(f"ours (scale {result['scale']}), accuracy %")
  ax.set_title(result['title'], fontsize=9)
  ax.legend(fontsize=7)
  fig.tight_layout()
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  fig.savefig(path, dpi=110)
  plt.close(fig)


def figure2_markdown(result: dict) -> str:
  """`figure2.md`: per panel, the final-step loss of each attack (ours) beside the paper's
  stated L2L-DA loss, and the figures."""
  lines = [f"# {result['title']}", '', result['caption'], '']
  lines += [f'- {note}' for note in result['notes']]
  section = result['sections'][0]
  lines += [''] + section_markdown(section)
  for panel in result['panels']:
    lines += ['', f"### {panel['label']}", '']
    lines += [f'![{panel["label"]}, seed {seed}]({png})' for seed, png in panel['pngs']]
  lines += ['', '## Models', '']
  lines += [f"- {m['name']} (seed {m['seed']}): `{m['command']}`" for m in result['models']]
  lines += ['', '## Evaluations', '', '```'] + list(result['evaluation_commands']) + ['```', '']
  return '\n'.join(lines)
