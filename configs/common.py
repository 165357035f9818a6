"""Fields shared by every dataset's config; dataset files change only what differs."""

import os

import ml_collections


def authors_reach_step(config, steps: int):
  """The generator step that gives T steps the authors' reach: 2.5 eps (10 steps of eps/4).

  SPEC section 1: T * step must be >= eps; a CPU-sized T keeps the authors' ratio.
  """
  return config.get_ref('eps') * (2.5 / steps)


def base_config() -> ml_collections.ConfigDict:
  """The paper recipe (SPEC section 4) with dataset-neutral defaults."""
  config = ml_collections.ConfigDict()
  config.seed = 0
  config.method = 'l2lda'  # l2lda | l2l | plain | fgsm | pgd | cw
  # A workdir whose best (else latest) classifier starts this run (CIFAR-10 pre-training).
  config.init_from = ''
  config.model = 'lenet5'

  config.data = ml_collections.ConfigDict()
  config.data.name = 'mnist'
  config.data.tfds_data_dir = os.environ.get('TFDS_DATA_DIR', '')
  # Offline builds: a folder holding the original files (MNIST IDX .gz) or the
  # CIFAR-10 JPEG tarball. Empty means: let TFDS download.
  config.data.manual_dir = os.environ.get('L2LDA_MANUAL_DIR', '')
  config.data.validation_size = 5000
  config.data.crop_padding = 4
  config.data.horizontal_flip = False

  # Linf threat model (paper: 0.3 MNIST, 8/255 CIFAR-10).
  config.eps = 0.3

  config.train = ml_collections.ConfigDict()
  config.train.steps = 100_000
  config.train.batch_size = 100
  config.train.learning_rate = 0.01
  config.train.momentum = 0.9
  config.train.weight_decay = 1e-5
  config.train.grad_clip_norm = 1.0
  config.train.lr_decay_steps = (50_000,)
  config.train.lr_decay_factor = 0.1
  config.train.clean_warmup_steps = 1000
  # Classifier loss on [x; x_adv] (paper: L(x) + L(x_adv)); False: x_adv only (Madry).
  config.train.include_clean_loss = True
  # Not in the paper: weight of GradAlign's penalty (l2lda_jax.regularizers) on every
  # adversarial step, for studies of gradient masking; 0 = off (SPEC's loss).
  config.train.grad_align_weight = 0.0

  # Attacks used to make training examples (SPEC sections 5, 6).
  config.attack = ml_collections.ConfigDict()
  config.attack.pgd_steps = 10
  config.attack.pgd_step_size = config.get_ref('eps') / 4
  config.attack.cw_steps = 100
  config.attack.cw_learning_rate = 1e-3
  # Unroll the attack's step loop? Measured on a 2-core CPU, LeNet-5 PGD-10 training
  # steps ran 315 ms rolled vs 423 ms unrolled (docs/PERFORMANCE.md).
  config.attack.unroll = False

  # The L2L-DA generator and game (SPEC sections 1, 2; method=l2l ignores these and
  # uses L2L*'s fixed one-shot settings). Table 1 ablations are overrides of these fields.
  # Convolutions (LeNet-5 and the generator): 'auto' runs matmul forms on CPU and XLA's own
  # convolutions on GPU/TPU; 'native' or 'cpu' force one (l2lda_jax/models/convolution.py).
  config.conv_impl = 'auto'

  config.generator = ml_collections.ConfigDict()
  config.generator.width = 64
  config.generator.z_dim = 8
  config.generator.steps = 10  # T; 1 with use_delta=False is the one-shot ablation
  config.generator.step_size = config.get_ref('eps') / 4
  # T * step_size must reach eps (SPEC section 1), else the classifier never sees an
  # attack at the radius it is tested at: a config error unless this is True (studies).
  config.generator.allow_short_reach = False
  config.generator.diversity_weight = 0.02  # lambda; 0 turns the diversity loss off
  config.generator.use_delta = True
  config.generator.use_label = True  # class-conditional BN; False: plain BN
  config.generator.normalize_grad = 'channel'  # channel | batch_max | none
  # delta_0 = 0 (SPEC); True starts each attack uniformly in the eps-ball, as PGD does.
  config.generator.random_start = False
  # What the classifier trains on: 'all_draws' (SPEC: x_adv_T of both z draws) or
  # 'worst_draw' (per image the draw with the higher CE, as PGD restarts keep the worst).
  config.generator.classifier_sees = 'all_draws'
  # The authors use the classifier's learning rate (1:1); a faster classifier outruns
  # its adversary. The progress line logs both.
  config.generator.learning_rate = 0.01
  config.generator.momentum = 0.9
  config.generator.weight_decay = 1e-5
  config.generator.grad_clip_norm = 1.0
  # Generator ascent steps per classifier update (the authors: 1); each costs a full attack.
  config.generator.updates_per_step = 1
  # XLA:CPU runs a rolled scan over the generator's convolutions ~14x slower.
  config.generator.unroll = True

  # Overrides of config.train for l2lda / l2l runs only, so one CPU config gives both a
  # gradient-method run and a game run of about the same wall time (a game step costs
  # several PGD steps). 0 or () keeps config.train's value.
  config.l2lda_run = ml_collections.ConfigDict()
  config.l2lda_run.steps = 0
  config.l2lda_run.batch_size = 0
  config.l2lda_run.lr_decay_steps = ()
  config.l2lda_run.learning_rate = 0.0
  config.l2lda_run.clean_warmup_steps = -1  # -1 keeps config.train's

  # Model selection on the validation split (never the test set).
  config.eval = ml_collections.ConfigDict()
  config.eval.every_steps = 5000
  config.eval.num_examples = 5000  # of the validation split
  config.eval.batch_size = 500
  config.eval.pgd_steps = 20
  config.eval.pgd_step_size = config.get_ref('eps') / 8

  # Final report on the test set, once, after training.
  config.test = ml_collections.ConfigDict()
  config.test.num_examples = 0  # 0: the whole test set
  config.test.pgd_steps = 40
  config.test.pgd_step_size = 0.01
  config.test.batch_size = 500

  config.checkpoint = ml_collections.ConfigDict()
  config.checkpoint.every_steps = 5000
  config.checkpoint.keep = 3

  config.log_every_steps = 100
  return config
