"""CIFAR-10 ResNet-20 (SPEC sections 3-4).

  python train.py --config=configs/cifar10.py --workdir=runs/cifar10
  python train.py --config=configs/cifar10.py:cpu --workdir=runs/cifar10_cpu
  python train.py --config=configs/cifar10.py:smoke --workdir=/tmp/smoke_cifar

Offline, point L2LDA_MANUAL_DIR at a folder with cifar10-jpeg.tar.gz: that copy is
lossy JPEG and every log and result made from it says so.
"""

from configs import common


def get_config(variant: str = ''):
  config = common.base_config()
  config.data.name = 'cifar10'
  config.data.horizontal_flip = True
  config.model = 'resnet20'
  config.eps = 8 / 255
  # The paper starts from a clean-pretrained ResNet-20 and has no warm-up there.
  config.train.clean_warmup_steps = 0
  config.generator.diversity_weight = 0.5  # lambda for CIFAR-10 (code)

  if variant == 'cpu':
    config.train.steps = 3000
    config.train.batch_size = 64
    config.train.lr_decay_steps = (2000,)
    config.attack.pgd_steps = 5
    config.eval.every_steps = 1000
    config.eval.num_examples = 500
    config.checkpoint.every_steps = 500
    config.test.num_examples = 2000
  elif variant == 'smoke':
    config.train.steps = 6
    config.train.batch_size = 16
    config.train.clean_warmup_steps = 2
    config.train.lr_decay_steps = (4,)
    config.attack.pgd_steps = 2
    config.attack.cw_steps = 2
    config.eval.every_steps = 3
    config.eval.num_examples = 32
    config.eval.batch_size = 32
    config.eval.pgd_steps = 2
    config.test.num_examples = 64
    config.test.pgd_steps = 2
    config.test.batch_size = 64
    config.checkpoint.every_steps = 3
    config.log_every_steps = 2
    config.generator.width = 8
    config.generator.steps = 2
    config.generator.step_size = common.authors_reach_step(config, 2)
  elif variant:
    raise ValueError(f'configs/cifar10.py: unknown variant {variant!r} (use cpu or smoke)')
  return config
