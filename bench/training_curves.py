"""Validation curves of several training runs in one PNG (+ JSON), one line per run.

  python bench/training_curves.py --output=docs/figures/l2lda_recipe_study.png \
      runs/study/r25_lr1 runs/study/r25_lr5 ...

Reads each workdir's TensorBoard events (what train.py logs at every validation) and
plots, against training minutes, validation PGD-20 accuracy at eps, the run's own
generator's attack accuracy, PGD-20 at 1.25 eps and clean accuracy. Minutes are the
events' wall clock since the run's first logged step, so they include validation and
exclude compilation before that step.
"""

import argparse
import glob
import json
import os

PANELS = (('val_robust_accuracy', 'validation PGD-20 accuracy at eps'),
          ('val_generator_accuracy', "accuracy under the run's own generator"),
          ('val_robust_accuracy_eps_x1.25', 'validation PGD-20 accuracy at 1.25 eps'),
          ('val_clean_accuracy', 'validation clean accuracy'))


def read_scalars(workdir: str) -> dict:
  """{tag: [(step, wall seconds since the first event, value)]} from a run's events."""
  import tensorflow as tf
  rows, first = {}, None
  for path in sorted(glob.glob(os.path.join(workdir, 'events.out.tfevents.*'))):
    for event in tf.compat.v1.train.summary_iterator(path):
      for value in event.summary.value:
        first = event.wall_time if first is None else first
        number = (value.simple_value if value.WhichOneof('value') == 'simple_value'
                  else float(tf.make_ndarray(value.tensor)))  # clu's writer stores tensors
        rows.setdefault(value.tag, []).append((int(event.step), event.wall_time - first, number))
  return {tag: sorted(points) for tag, points in rows.items()}


def plot(curves: dict, output: str) -> None:
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  fig, axes = plt.subplots(2, 2, figsize=(12, 8), sharex=True)
  for ax, (tag, title) in zip(axes.flat, PANELS):
    for name, scalars in curves.items():
      points = scalars.get(tag, [])
      if points:
        ax.plot([p[1] / 60 for p in points], [p[2] for p in points], marker='o',
                markersize=3, label=name)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.set_ylim(0, 1)
  for ax in axes[1]:
    ax.set_xlabel('training minutes (wall clock)')
  axes[0, 0].legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(output, dpi=100)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('workdirs', nargs='+')
  parser.add_argument('--output', required=True, help='PNG path; the JSON goes beside it')
  args = parser.parse_args()
  curves = {os.path.basename(os.path.normpath(w)): read_scalars(w) for w in args.workdirs}
  plot(curves, args.output)
  data = {name: {tag: scalars.get(tag, []) for tag, _ in PANELS}
          for name, scalars in curves.items()}
  with open(os.path.splitext(args.output)[0] + '.json', 'w') as f:
    json.dump(data, f, indent=1)
  print(f'wrote {args.output}')


if __name__ == '__main__':
  main()
