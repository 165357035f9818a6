"""MNIST LeNet-5 (SPEC sections 3-4).

  python train.py --config=configs/mnist.py --workdir=runs/mnist          # paper recipe
  python train.py --config=configs/mnist.py:cpu --workdir=runs/mnist_cpu  # ~1 h on a 2-core CPU
  python train.py --config=configs/mnist.py:smoke --workdir=/tmp/smoke    # < 2 min, tiny
"""

from configs import common
from configs.common import authors_reach_step


def get_config(variant: str = ''):
  config = common.base_config()
  config.data.name = 'mnist'
  config.model = 'lenet5'
  config.eps = 0.3

  if variant == 'cpu':
    # PGD-10 training: 50 min on one core of the 2-core dev VM, clean 98.5%, PGD-40
    # 92.4% (docs/RESULTS.md). Keep the clean term of the loss: with x_adv only, this
    # recipe collapsed to chance. PGD-5 with a larger step (more, cheaper steps in the
    # same time) did worse.
    config.train.steps = 15_000
    config.train.batch_size = 100
    config.train.learning_rate = 0.05
    config.train.lr_decay_steps = (11_250, 13_750)
    config.train.clean_warmup_steps = 500
    config.eval.every_steps = 1000
    config.eval.num_examples = 1000
    config.checkpoint.every_steps = 1000
    # L2L-DA (the default method) at CPU scale, also about an hour, chosen by the recipe
    # study of docs/RESULTS.md: a width-8, T = 3 generator whose steps keep the authors'
    # reach of 2.5 eps (step 0.25 = 0.83 eps; a reach of eps did worse), the authors' 1:1
    # learning rates (5:1 did worse), and a 2,000-step clean warm-up (500 did worse).
    # Wider (16) and longer (T = 5, 10) generators learned slower per minute here. The
    # paper's shapes (width 64, T = 10, batch 100) are 671 GFLOP per step.
    config.generator.width = 8
    config.generator.steps = 3
    config.generator.step_size = authors_reach_step(config, 3)
    config.generator.learning_rate = 0.05  # 1:1 with the classifier (train.learning_rate)
    # The paper's 0.02 lets the CE gradient kill z's ReLUs within ~1,000 game steps at this
    # lr: the generator turns deterministic (docs/RESULTS.md, the z pathway).
    config.generator.diversity_weight = 0.5
    # Start each attack uniformly in the eps-ball, as PGD does: from delta_0 = 0 the
    # classifier learnt a loss with zero gradient on ~45% of the pixels at x, where every
    # generator attack began (docs/RESULTS.md, third round).
    config.generator.random_start = True
    config.l2lda_run.steps = 18_000
    config.l2lda_run.batch_size = 50
    config.l2lda_run.clean_warmup_steps = 2_000
    config.l2lda_run.lr_decay_steps = (14_500, 17_000)
    # Every checkpoint of the hour is kept (small): robustness against training minutes.
    config.checkpoint.keep = 15
  elif variant == 'smoke':
    config.train.steps = 20
    config.train.batch_size = 32
    config.train.clean_warmup_steps = 5
    config.train.lr_decay_steps = (15,)
    config.attack.pgd_steps = 3
    config.attack.cw_steps = 3
    config.eval.every_steps = 10
    config.eval.num_examples = 64
    config.eval.batch_size = 64
    config.eval.pgd_steps = 3
    config.test.num_examples = 256
    config.test.pgd_steps = 5
    config.test.batch_size = 128
    config.checkpoint.every_steps = 10
    config.log_every_steps = 5
    config.generator.width = 8
    config.generator.steps = 2
    config.generator.step_size = authors_reach_step(config, 2)
  elif variant:
    raise ValueError(f'configs/mnist.py: unknown variant {variant!r} (use cpu or smoke)')
  return config
