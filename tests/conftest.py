"""Shared fixtures: tiny configs over mock TFDS data (no files, no network)."""

import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)  # `configs` is imported as a package by the config files


@pytest.fixture
def tiny_mnist_config():
  """configs/mnist.py:smoke shrunk further, reading mock data (no manual_dir)."""
  from configs import mnist
  config = mnist.get_config('smoke')
  config.data.manual_dir = ''
  config.data.validation_size = 32
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
  config.test.num_examples = 32
  config.test.batch_size = 32
  config.test.pgd_steps = 2
  config.checkpoint.every_steps = 3
  config.log_every_steps = 3
  config.generator.width = 8
  config.generator.steps = 2
  return config
