"""Checks a training config before any work starts: one clear line per bad field."""

import jax

from l2lda_jax.models.convolution import IMPLEMENTATIONS as conv_implementations

METHODS = ('l2lda', 'l2l', 'plain', 'fgsm', 'pgd', 'cw')
GRADIENT_NORMALISATIONS = ('channel', 'batch_max', 'none')
CLASSIFIER_SEES = ('all_draws', 'worst_draw')
DATASETS = ('mnist', 'cifar10')
MODELS = ('lenet5', 'resnet20')


class ConfigError(ValueError):
  """A config field holds an invalid value; the message names the field."""


def _require(ok: bool, field: str, value, rule: str):
  if not ok:
    raise ConfigError(f'config.{field} {rule}, got {value!r}')


def _positive_int(config, field: str):
  value = config
  for part in field.split('.'):
    value = value[part]
  _require(isinstance(value, int) and value >= 1, field, value, 'must be an integer >= 1')


def generator_reach(steps: int, step_size: float) -> float:
  """T * eps_step: the farthest the recursive attack can move a pixel (SPEC section 1)."""
  return steps * step_size


def reaches(steps: int, step_size: float, eps: float) -> bool:
  """Whether T steps of eps_step can reach the eps-ball boundary (float round-off allowed)."""
  return generator_reach(steps, step_size) >= eps * (1 - 1e-9)


def _check_reach(config) -> None:
  """An L2L-DA generator that cannot reach eps trains a classifier that is not robust at eps:
  an error unless the run asks for it (generator.allow_short_reach, for studies)."""
  g = config.generator
  if config.method != 'l2lda' or g.get('allow_short_reach', False):
    return
  if not reaches(g.steps, g.step_size, config.eps):
    raise ConfigError(
        f'config.generator.steps x config.generator.step_size = {g.steps} x {g.step_size:g} '
        f'= reach {generator_reach(g.steps, g.step_size):g} < config.eps {config.eps:g}: the '
        f'generator can never reach the eps-ball boundary. Raise generator.step_size to at '
        f'least {config.eps / g.steps:g} (or generator.steps), or set '
        f'generator.allow_short_reach=True to study a short reach on purpose')


def validate_config(config, num_devices: int | None = None) -> None:
  """Raises ConfigError naming the first invalid field of a training config."""
  num_devices = jax.device_count() if num_devices is None else num_devices
  _require(config.method in METHODS, 'method', config.method, f'must be one of {METHODS}')
  _require(config.data.name in DATASETS, 'data.name', config.data.name,
           f'must be one of {DATASETS}')
  _require(config.model in MODELS, 'model', config.model, f'must be one of {MODELS}')
  _require(config.get('conv_impl', 'auto') in conv_implementations, 'conv_impl',
           config.get('conv_impl'), f'must be one of {conv_implementations}')
  _require(0.0 <= config.eps <= 1.0, 'eps', config.eps, 'must be in [0, 1]')
  for field in ('train.steps', 'train.batch_size', 'attack.pgd_steps', 'attack.cw_steps',
                'eval.every_steps', 'eval.batch_size', 'eval.pgd_steps', 'test.pgd_steps',
                'test.batch_size', 'checkpoint.every_steps', 'checkpoint.keep',
                'log_every_steps', 'data.validation_size', 'generator.width',
                'generator.z_dim', 'generator.steps', 'generator.updates_per_step'):
    _positive_int(config, field)
  for field in ('train.batch_size', 'eval.batch_size', 'test.batch_size'):
    section, name = field.split('.')
    value = config[section][name]
    _require(value % num_devices == 0, field, value,
             f'must be divisible by the number of devices ({num_devices})')
  train = config.train
  _require(train.learning_rate > 0, 'train.learning_rate', train.learning_rate, 'must be > 0')
  _require(0 <= train.momentum < 1, 'train.momentum', train.momentum, 'must be in [0, 1)')
  _require(train.weight_decay >= 0, 'train.weight_decay', train.weight_decay, 'must be >= 0')
  _require(train.get('grad_align_weight', 0.0) >= 0, 'train.grad_align_weight',
           train.get('grad_align_weight', 0.0), 'must be >= 0 (0 turns GradAlign off)')
  _require(train.grad_clip_norm > 0, 'train.grad_clip_norm', train.grad_clip_norm,
           'must be > 0')
  _require(0 < train.lr_decay_factor <= 1, 'train.lr_decay_factor', train.lr_decay_factor,
           'must be in (0, 1]')
  decay = tuple(train.lr_decay_steps)
  _require(all(isinstance(s, int) and s > 0 for s in decay) and list(decay) == sorted(decay),
           'train.lr_decay_steps', decay, 'must be increasing positive integers')
  _require(isinstance(train.clean_warmup_steps, int) and train.clean_warmup_steps >= 0,
           'train.clean_warmup_steps', train.clean_warmup_steps, 'must be an integer >= 0')
  for field, value in (('attack.pgd_step_size', config.attack.pgd_step_size),
                       ('attack.cw_learning_rate', config.attack.cw_learning_rate),
                       ('eval.pgd_step_size', config.eval.pgd_step_size),
                       ('test.pgd_step_size', config.test.pgd_step_size)):
    _require(value > 0, field, value, 'must be > 0')
  g = config.generator
  for field, value in (('generator.step_size', g.step_size),
                       ('generator.learning_rate', g.learning_rate),
                       ('generator.grad_clip_norm', g.grad_clip_norm)):
    _require(value > 0, field, value, 'must be > 0')
  _check_reach(config)
  _require(g.diversity_weight >= 0, 'generator.diversity_weight', g.diversity_weight,
           'must be >= 0 (0 turns the diversity loss off)')
  _require(g.weight_decay >= 0, 'generator.weight_decay', g.weight_decay, 'must be >= 0')
  _require(0 <= g.momentum < 1, 'generator.momentum', g.momentum, 'must be in [0, 1)')
  _require(g.get('classifier_sees', 'all_draws') in CLASSIFIER_SEES,
           'generator.classifier_sees', g.get('classifier_sees'),
           f'must be one of {CLASSIFIER_SEES}')
  _require(g.normalize_grad in GRADIENT_NORMALISATIONS, 'generator.normalize_grad',
           g.normalize_grad, f'must be one of {GRADIENT_NORMALISATIONS}')
  _require(config.data.crop_padding >= 0, 'data.crop_padding', config.data.crop_padding,
           'must be >= 0')
  _require(config.eval.num_examples >= 0, 'eval.num_examples', config.eval.num_examples,
           'must be >= 0 (0: the whole validation split)')
  _require(config.test.num_examples >= 0, 'test.num_examples', config.test.num_examples,
           'must be >= 0 (0: the whole test set)')
