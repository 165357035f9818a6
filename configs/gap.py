"""GAP (Poursaeed et al. 2018, image-dependent) as an evaluation attack: docs/ATTACKS.md.

  get_config()         the documented recipe: a few minutes on a 2-core CPU against LeNet-5
  get_config('smoke')  a few tiny steps, for tests

eps is not here: it is the threat model of the classifier under evaluation (config.eps).
"""

import ml_collections


def get_config(variant: str = '') -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.kind = 'gap'
  config.seed = 0  # the order of training batches
  config.steps = 1000
  config.batch_size = 64
  config.log_every_steps = 100

  # Their ResnetGenerator (c7s1-w, d2w, d4w, blocks x r4w, u2w, uw, c7s1-C, tanh), w = 64
  # and 6 blocks on ImageNet; narrower here for a CPU budget.
  config.generator = ml_collections.ConfigDict()
  config.generator.width = 8
  config.generator.res_blocks = 6

  # Adam with GAP's beta1 = 0.5.
  config.learning_rate = 1e-3
  config.adam_b1 = 0.5
  config.adam_b2 = 0.999

  # 'fool': mean -log(1 - p_y) on the true label; 'least_likely': their code's
  # log CE_mean(x_adv, least-likely class of the clean prediction).
  config.loss = 'fool'

  if variant == 'smoke':
    # Tiny network: compilation dominates a test on a CPU. The toy task of the tests
    # breaks after about 16 steps; 30 leave a margin.
    config.steps = 30
    config.batch_size = 32
    config.log_every_steps = 10
    config.generator.width = 4
    config.generator.res_blocks = 1
  elif variant:
    raise ValueError(f'configs/gap.py: unknown variant {variant!r} (use smoke)')
  return config
