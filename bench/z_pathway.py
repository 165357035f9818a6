"""Is the generator still stochastic? Live units of its z pathway, per kept checkpoint.

  python bench/z_pathway.py --workdir=runs/mnist_cpu_l2lda [--checkpoints=4000,18000]

z enters the generator only through Linear -> ReLU -> Linear -> ReLU (SPEC section 2). A
unit of the second ReLU that is zero for every z carries no randomness; when all of them
are, the generator is a deterministic function of (x, gn, delta, y), its diversity loss has
no gradient, and the classifier trains against one attack per image.
"""

import argparse
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

NUM_Z_DRAWS = 4096


def z_features(params: dict, z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """(first, second) ReLU activations of the generator's z MLP for the draws `z`."""
  dense = lambda name, h: h @ np.asarray(params[name]['kernel']) + np.asarray(params[name]['bias'])
  first = np.maximum(dense('z_fc1', z), 0)
  return first, np.maximum(dense('z_fc2', first), 0)


def z_pathway_report(params: dict, seed: int = 0) -> dict:
  z_dim = np.asarray(params['z_fc1']['kernel']).shape[0]
  z = np.random.default_rng(seed).standard_normal((NUM_Z_DRAWS, z_dim)).astype(np.float32)
  first, second = z_features(params, z)
  return {'z_fc1_live_units': int((first > 0).any(0).sum()),
          'z_fc2_live_units': int((second > 0).any(0).sum()),
          'z_feature_std': float(second.std(0).mean()), 'units': z_dim}


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--workdir', required=True)
  parser.add_argument('--checkpoints', default='', help='comma-separated steps; default all kept')
  args = parser.parse_args()
  from bench.robustness_vs_minutes import checkpoint_steps
  from l2lda_jax import robustness
  steps = ([int(s) for s in args.checkpoints.split(',')] if args.checkpoints
           else checkpoint_steps(args.workdir))
  for step in steps:
    generator = robustness.restore_classifier(args.workdir, str(step)).generator
    params = generator['params']
    print(json.dumps({'step': step, **z_pathway_report(params.get('params', params))}), flush=True)


if __name__ == '__main__':
  main()
