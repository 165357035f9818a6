"""Do more PGD restarts find what only Square finds? (restarts: local optima; none: masking)

Reads two `evaluate.py` reports of one model on the same examples: its `autoattack` report
(each stage's per-example correctness, cumulative) and a report with the gradient attack
NAME (here pgd100x10: PGD-100, 10 random restarts, best iterate). Prints how many images
only Square breaks (every gradient stage of AutoAttack left them correct) and how many of
those NAME breaks. Few: the gradient attacks do not reach them from any start, the
gradient is what fails (masking); most: more restarts would have found them.

  PYTHONPATH=. python docs/reproduction/table1_masking/square_only_vs_restarts.py AUTOATTACK.json OTHER.json NAME
"""
import json
import sys

from l2lda_jax.robustness import unpack_correct as correct_bits


def main(autoattack_path: str, other_path: str, name: str) -> None:
  autoattack, other = json.load(open(autoattack_path)), json.load(open(other_path))
  n = autoattack['num_examples']
  if other['num_examples'] != n:
    raise SystemExit(f'{other_path}: {other["num_examples"]} examples, {autoattack_path}: {n}')
  stages = autoattack['per_example_correct']
  after_gradient = correct_bits(stages['autoattack fab-t'], n)
  after_square = correct_bits(stages['autoattack square'], n)
  attack = correct_bits(other['per_example_correct'][name], n)
  square_only = after_gradient & ~after_square
  print(f'{name}: {attack.mean() * 100:.2f}%; AutoAttack after its gradient stages '
        f'{after_gradient.mean() * 100:.2f}%, after Square {after_square.mean() * 100:.2f}%')
  print(f'images only Square breaks: {square_only.sum()}; of them {name} breaks '
        f'{(square_only & ~attack).sum()}')
  print(f'images {name} breaks that AutoAttack leaves correct: {(after_square & ~attack).sum()}')


if __name__ == '__main__':
  main(*sys.argv[1:4])
