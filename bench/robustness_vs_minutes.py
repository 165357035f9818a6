"""Per-example worst-case robustness of every kept checkpoint of a run, against training minutes.

  python bench/robustness_vs_minutes.py --workdir=runs/mnist_cpu_l2lda \
      --attacks=pgd100,square --split=validation --num_examples=1000 \
      --output=docs/figures/robustness_vs_minutes_mnist_cpu_l2lda.png

Runs evaluate.py's report (l2lda_jax.robustness.evaluate) on each checkpoint in
WORKDIR/checkpoints, with `clean` added, and plots each attack's accuracy and the
per-example worst case against the minute of training at which the checkpoint was saved
(the wall clock of the run's TensorBoard events at that step, since its first logged
step; a run that was paused, or killed and resumed, counts only its working time: see
`training_clock`). It answers "how long would this recipe have to train to reach X". Use
--split=validation when the curve is used to choose anything.

On a machine without TensorFlow (a lent GPU), `--snapshot=SPLITS.npz` evaluates there and
prints one JSON line per checkpoint; `--points=THOSE_LINES` then adds the minutes from the
run's events and draws the plot here.
"""

import argparse
import json
import os
import sys
from typing import Optional

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from l2lda_jax.summaries import read_event_times, training_clock  # noqa: E402


def checkpoint_steps(workdir: str) -> list[int]:
  """The steps of WORKDIR/checkpoints/<step>, ascending."""
  folder = os.path.join(workdir, 'checkpoints')
  return sorted(int(name) for name in os.listdir(folder) if name.isdigit())


def minute_of_step(clock: list[tuple[int, float]], step: int) -> float:
  """Training minutes at the first logged event at or after `step` (validation and saves
  happen at the same step)."""
  times = [seconds for s, seconds in clock if s >= step]
  return min(times) / 60 if times else float('nan')


def evaluate_checkpoints(args) -> list[dict]:
  from l2lda_jax import robustness
  from l2lda_jax.attack_specs import parse_attacks
  if args.snapshot:
    from bench.snapshot import read_from_snapshot
    read_from_snapshot(args.snapshot)
  clock = [] if args.snapshot else training_clock(read_event_times(args.workdir))  # needs TF
  steps = checkpoint_steps(args.workdir)
  if args.steps:
    wanted = [int(step) for step in args.steps.split(',')]
    missing = sorted(set(wanted) - set(steps))
    if missing:
      sys.exit(f'error: --steps: no checkpoint of step {missing} in {args.workdir}/checkpoints')
    steps = wanted
  else:
    steps = steps[::args.every]
  points = []
  for step in steps:
    options = robustness.EvalOptions(
        workdir=args.workdir, attacks=parse_attacks(['clean'] + args.attacks.split(',')),
        checkpoint=str(step), split=args.split, num_examples=args.num_examples,
        batch_size=args.batch_size, progress=False)
    robustness.validate_options(options)
    report = robustness.evaluate(options, log=lambda *_: None)
    point = {'step': step, 'minutes': minute_of_step(clock, step),
             'worst_case_accuracy': report['worst_case_accuracy'],
             **{row['attack']: row['accuracy'] for row in report['rows']}}
    print(json.dumps(point), flush=True)
    points.append(point)
  return points


def plot(points: list[dict], attacks: list[str], title: str, output: str,
         baseline: Optional[dict] = None,
         xlabel: str = 'training minutes (wall clock)') -> None:
  """One line per attack and the worst case; `baseline` (another run's JSON from this
  script) adds that run's worst case, dashed, for a side-by-side reading."""
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  fig, ax = plt.subplots(figsize=(7, 4.5))
  minutes = [p['minutes'] for p in points]
  for name in ['clean'] + attacks:
    ax.plot(minutes, [p[name] for p in points], marker='o', markersize=3, label=name)
  ax.plot(minutes, [p['worst_case_accuracy'] for p in points], marker='s', color='black',
          label='per-example worst case')
  if baseline:
    name = os.path.basename(os.path.normpath(baseline['workdir']))
    ax.plot([p['minutes'] for p in baseline['points']],
            [p['worst_case_accuracy'] for p in baseline['points']], marker='s', color='gray',
            linestyle='--', label=f'{name}: per-example worst case')
  ax.set_xlabel(xlabel)
  ax.set_ylabel('accuracy')
  ax.set_title(title, fontsize=9)
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(output, dpi=100)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--workdir', required=True)
  parser.add_argument('--attacks', default='pgd100,square')
  parser.add_argument('--split', default='validation', choices=['validation', 'test'])
  parser.add_argument('--num_examples', type=int, default=1000)
  parser.add_argument('--batch_size', type=int, default=500)
  parser.add_argument('--output', required=True, help='PNG path; the JSON goes beside it')
  parser.add_argument('--every', type=int, default=1, help='every n-th kept checkpoint')
  parser.add_argument('--steps', default='', help='these checkpoint steps (comma list) '
                      'instead of --every')
  parser.add_argument('--steps_per_minute', type=float, default=0.0,
                      help='minutes = step / this (a run whose wall clock was inflated by '
                           'other jobs, timed at its measured quiet rate) instead of the '
                           'events\' clock')
  parser.add_argument('--baseline', default='',
                      help='the JSON this script wrote for another run (same split and '
                           'images): its worst case is drawn beside this one\'s')
  parser.add_argument('--snapshot', default='',
                      help='read the splits from bench/offline_data.py\'s snapshot (a machine '
                           'without TFDS); minutes are left out: add them with --points here')
  parser.add_argument('--points', default='',
                      help='no evaluation: the JSON lines an earlier run printed, minutes '
                           'taken from WORKDIR\'s events, then the plot')
  args = parser.parse_args()
  if args.points:
    with open(args.points) as f:
      points = [json.loads(line) for line in f if line.startswith('{')]
    clock = training_clock(read_event_times(args.workdir))
    for point in points:
      point['minutes'] = minute_of_step(clock, point['step'])
  else:
    points = evaluate_checkpoints(args)
  if args.steps_per_minute:
    for point in points:
      point['wall_minutes'] = point['minutes']
      point['minutes'] = point['step'] / args.steps_per_minute
  attacks = args.attacks.split(',')
  title = (f'{os.path.basename(os.path.normpath(args.workdir))}: {args.num_examples} '
           f'{args.split} images')
  baseline = None
  if args.baseline:
    with open(args.baseline) as f:
      baseline = json.load(f)
  xlabel = (f'training minutes at {args.steps_per_minute:.0f} steps/min' if args.steps_per_minute
            else 'training minutes (wall clock)')
  plot(points, attacks, title, args.output, baseline, xlabel)
  with open(os.path.splitext(args.output)[0] + '.json', 'w') as f:
    json.dump({'workdir': args.workdir, 'split': args.split,
               'num_examples': args.num_examples, 'points': points}, f, indent=1)
  print(f'wrote {args.output}')


if __name__ == '__main__':
  main()
