"""AutoAttack (standard, Linf): l2lda_jax's `evaluate.py --attacks=autoattack` against
torchattacks' AutoAttack, stage by stage, on one trained run's weights and test images.

  python bench/autoattack_vs_torchattacks.py --workdir=runs/mnist_cpu_pgd --num_examples=1000

Both sides get the same weights (the run's best checkpoint, converted as export.py does)
and the same first N test images. torchattacks' stages are run as its `AutoAttack` runs
them (its `MultiAttack`: each attack only on the examples every earlier one left correct),
with AutoAttack's 100 iterations for APGD, APGD-T and FAB (torchattacks' `AutoAttack` leaves
them at its default of 10),
one after another here so that the robust accuracy after each stage can be printed beside
ours. Prints one line per stage (robust accuracy % of both, difference in pp, seconds of
both) and a JSON line with everything, including the speed ratio of the whole sequence.
The JAX side's seconds include compilation; torch runs on this process's CPU threads.

Needs torch and torchattacks (`pip install torchattacks --no-deps`).
"""

import argparse
import json
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

STAGES = ('apgd-ce', 'apgd-t', 'fab-t', 'square')
STANDARD_ITERATIONS = 100  # APGD, APGD-T and FAB-T in AutoAttack's standard version


def ours(workdir: str, num_examples: int, batch_size: int, seed: int) -> tuple[dict, dict]:
  """Stage -> (robust accuracy, seconds), and the report, from evaluate.py's own code."""
  from l2lda_jax import robustness
  from l2lda_jax.attack_specs import parse_attacks
  options = robustness.EvalOptions(workdir=workdir, attacks=parse_attacks('clean,autoattack'),
                                   num_examples=num_examples, batch_size=batch_size,
                                   seed=seed, progress=False)
  robustness.validate_options(options)
  report = robustness.evaluate(options, log=lambda *_: None)
  rows = {r['attack']: r for r in report['rows']}
  stages = {s: (rows[f'autoattack {s}']['accuracy'], rows[f'autoattack {s}']['seconds'])
            for s in STAGES}
  return {'clean': (rows['clean']['accuracy'], rows['clean']['seconds']), **stages}, report


def torch_model(workdir: str):
  """The run's best checkpoint as export.py writes it, loaded back as a PyTorch module."""
  import tempfile
  from l2lda_jax import export, robustness
  classifier = robustness.restore_classifier(workdir, 'best')
  with tempfile.TemporaryDirectory() as folder:
    path = os.path.join(folder, 'model.safetensors')
    export.export_workdir(workdir, path, 'best')
    model = export.load_torch_model(path)
  return model.eval(), classifier


def theirs(model, x: np.ndarray, y: np.ndarray, eps: float, seed: int, batch_size: int) -> dict:
  """torchattacks' AutoAttack stages (standard version, Linf), each on the survivors."""
  import torch
  import torchattacks
  attack = torchattacks.AutoAttack(model, norm='Linf', eps=eps, version='standard',
                                   n_classes=10, seed=seed)
  components = attack._autoattack.attacks  # APGD-CE, APGD-T, FAB-T, Square, in order
  for component in components[:3]:  # torchattacks leaves them at 10 iterations; AutoAttack: 100
    component.steps = STANDARD_ITERATIONS
  x_t = torch.from_numpy(x.transpose(0, 3, 1, 2).copy())
  y_t = torch.from_numpy(y.astype(np.int64))

  def predict(images):
    with torch.no_grad():
      return torch.cat([model(images[i:i + batch_size]).argmax(-1)
                        for i in range(0, len(images), batch_size)])

  robust = (predict(x_t) == y_t).numpy()
  results = {'clean': (float(robust.mean()), 0.0)}
  for stage, component in zip(STAGES, components):
    start = time.time()
    alive = np.flatnonzero(robust)
    for i in range(0, len(alive), batch_size):
      idx = alive[i:i + batch_size]
      x_adv = component(x_t[idx], y_t[idx])
      robust[idx] = (predict(x_adv) == y_t[idx]).numpy()
    results[stage] = (float(robust.mean()), time.time() - start)
    print(f'torchattacks {stage}: {100 * results[stage][0]:.2f}% ({results[stage][1]:.0f} s)',
          flush=True)
  return results


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--workdir', required=True)
  parser.add_argument('--num_examples', type=int, default=1000)
  parser.add_argument('--batch_size', type=int, default=500)
  parser.add_argument('--seed', type=int, default=0)
  args = parser.parse_args()
  from l2lda_jax import data as data_lib
  model, classifier = torch_model(args.workdir)
  eps = float(classifier.config.eps)
  test = data_lib.load_dataset(classifier.config.data).test.take(args.num_examples)
  x = np.asarray(test.images, np.float32) / 255.0
  mine, report = ours(args.workdir, args.num_examples, args.batch_size, args.seed)
  print('l2lda_jax ' + ', '.join(f'{s} {100 * a:.2f}% ({t:.0f} s)' for s, (a, t) in mine.items()),
        flush=True)
  other = theirs(model, x, np.asarray(test.labels), eps, args.seed, args.batch_size)
  print(f'{"stage":8} {"l2lda_jax %":>12} {"torchattacks %":>15} {"diff pp":>8} '
        f'{"ours s":>8} {"theirs s":>9}')
  for stage in ('clean',) + STAGES:
    (a, sa), (b, sb) = mine[stage], other[stage]
    print(f'{stage:8} {100 * a:12.2f} {100 * b:15.2f} {100 * (a - b):8.2f} {sa:8.1f} {sb:9.1f}')
  ours_total = sum(mine[s][1] for s in STAGES)
  theirs_total = sum(other[s][1] for s in STAGES)
  print(json.dumps({'workdir': args.workdir, 'examples': args.num_examples, 'eps': eps,
                    'l2lda_jax': mine, 'torchattacks': other, 'seconds_ours': ours_total,
                    'seconds_theirs': theirs_total,
                    'speedup': theirs_total / max(ours_total, 1e-9),
                    'warnings': report.get('warnings', [])}))


if __name__ == '__main__':
  main()
