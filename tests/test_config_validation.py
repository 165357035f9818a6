import os
import subprocess
import sys

import pytest

from configs import cifar10, mnist
from l2lda_jax.config_validation import ConfigError, validate_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize('variant', ['', 'cpu', 'smoke'])
@pytest.mark.parametrize('module', [mnist, cifar10])
def test_shipped_configs_are_valid(module, variant):
  validate_config(module.get_config(variant), num_devices=1)


@pytest.mark.parametrize('field,value,match', [
    ('eps', -0.1, 'config.eps'),
    ('method', 'madry', 'config.method'),
    ('train.steps', 0, 'config.train.steps'),
    ('train.batch_size', 0, 'config.train.batch_size'),
    ('train.learning_rate', -1.0, 'config.train.learning_rate'),
    ('attack.pgd_steps', 0, 'config.attack.pgd_steps'),
    ('data.name', 'imagenet', 'config.data.name'),
    ('train.lr_decay_steps', (50, 10), 'config.train.lr_decay_steps'),
    ('generator.classifier_sees', 'best', 'config.generator.classifier_sees'),
    ('train.grad_align_weight', -0.5, 'config.train.grad_align_weight'),
])
def test_invalid_field_is_named(field, value, match):
  config = mnist.get_config('smoke')
  section, _, name = field.rpartition('.')
  (config[section] if section else config)[name] = value
  with pytest.raises(ConfigError, match=match.replace('.', r'\.')):
    validate_config(config, num_devices=1)


def test_batch_must_divide_across_devices():
  config = mnist.get_config('smoke')
  config.train.batch_size = 30
  with pytest.raises(ConfigError, match=r'config\.train\.batch_size.*8'):
    validate_config(config, num_devices=8)


def test_unknown_variant_is_named():
  with pytest.raises(ValueError, match='bogus'):
    mnist.get_config('bogus')


def test_cli_rejects_bad_config_with_one_line(tmp_path):
  result = subprocess.run(
      [sys.executable, 'train.py', '--config=configs/mnist.py:smoke', '--config.eps=-0.1',
       f'--workdir={tmp_path}'], cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert result.returncode == 1
  assert 'Traceback' not in result.stderr
  assert result.stderr.strip().splitlines()[-1] == (
      'error: config.eps must be in [0, 1], got -0.1')


def test_l2lda_run_overrides_apply_to_game_methods_only():
  from configs import mnist
  from l2lda_jax import train
  config = mnist.get_config('cpu')
  game = train.resolve_run_length(config)
  assert (game.train.steps, game.train.batch_size) == (config.l2lda_run.steps,
                                                       config.l2lda_run.batch_size)
  assert tuple(game.train.lr_decay_steps) == tuple(config.l2lda_run.lr_decay_steps)
  config.l2lda_run.learning_rate = 0.02
  config.l2lda_run.clean_warmup_steps = 0  # 0 is a value here, not "keep"
  game = train.resolve_run_length(config)
  assert (game.train.learning_rate, game.train.clean_warmup_steps) == (0.02, 0)
  config.method = 'pgd'
  assert train.resolve_run_length(config).train.steps == config.train.steps != game.train.steps
  config.method = 'l2lda'
  config.l2lda_run.steps = -5
  with pytest.raises(ConfigError, match='l2lda_run.steps'):
    train.resolve_run_length(config)


@pytest.mark.parametrize('variant', ['', 'cpu', 'smoke'])
def test_every_shipped_l2lda_recipe_reaches_eps(variant):
  from configs import cifar10, mnist
  from l2lda_jax.config_validation import reaches
  for module in (mnist, cifar10):
    g = module.get_config(variant).copy_and_resolve_references()
    assert reaches(g.generator.steps, g.generator.step_size, g.eps), (module.__name__, variant)


def test_a_generator_that_cannot_reach_eps_is_an_error_naming_both_fields():
  from configs import mnist
  config = mnist.get_config('smoke')
  config.generator.steps = 3
  config.generator.step_size = 0.075  # reach 0.225 < eps 0.3: the old :cpu recipe
  with pytest.raises(ConfigError) as error:
    validate_config(config, num_devices=1)
  message = str(error.value)
  assert 'config.generator.steps' in message and 'config.generator.step_size' in message
  assert 'reach 0.225' in message and 'allow_short_reach' in message
  config.generator.allow_short_reach = True  # a study may want it
  validate_config(config, num_devices=1)
  config.generator.allow_short_reach = False
  config.generator.step_size = 0.1  # 3 x 0.1 reaches eps (float round-off allowed)
  validate_config(config, num_devices=1)
  config.method = 'pgd'  # the generator is not used
  config.generator.step_size = 0.01
  validate_config(config, num_devices=1)


def test_one_shot_ablation_with_a_step_of_eps_is_accepted():
  from configs import mnist
  config = mnist.get_config('')
  config.generator.steps = 1
  config.generator.step_size = config.eps  # Table 1 "no R": one step of eps, as L2L*
  validate_config(config, num_devices=1)
  config.generator.step_size = config.eps / 4
  with pytest.raises(ConfigError, match='generator.step_size'):
    validate_config(config, num_devices=1)
