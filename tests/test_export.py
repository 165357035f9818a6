"""Export to PyTorch: the torch modules' logits equal the JAX models' (eval mode).

torch is test-only (.ci/run installs it); without it these tests skip.
"""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from l2lda_jax import export
from l2lda_jax.checkpoint import Checkpoints
from l2lda_jax.models import LeNet5, ResNet20

torch = pytest.importorskip('torch')
from l2lda_jax import torch_models  # pylint: disable=g-import-not-at-top,wrong-import-position

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOLERANCE = 1e-4


def _random_variables(model, size: int, channels: int, seed: int) -> dict:
  """Random weights of the shapes model.init makes, without compiling its initialisers.

  Every leaf is random, BatchNorm gamma/beta and running statistics included, so a
  swapped or untransposed field changes the logits. Kernels of std 1/sqrt(fan_in) and
  BN that shrinks keep the logits O(1), so that the 1e-4 bound means something.
  """
  shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0),
                          jax.ShapeDtypeStruct((1, size, size, channels), jnp.float32))
  rng = np.random.default_rng(seed)

  def draw(path, leaf):
    name, shape = path[-1].key, leaf.shape
    if name == 'kernel':
      value = rng.normal(0.0, np.sqrt(1 / np.prod(shape[:-1])), shape)
    elif name == 'scale':
      value = rng.uniform(0.5, 1.0, shape)
    elif name == 'var':
      value = rng.uniform(1.0, 2.0, shape)
    else:  # bias, BN beta, BN running mean
      value = rng.normal(0.0, 0.1, shape)
    return value.astype(np.float32)

  return jax.tree_util.tree_map_with_path(draw, dict(shapes))


def _images(size: int, channels: int, seed: int = 0) -> np.ndarray:
  """NCHW images in [0, 1], the torch convention."""
  return np.random.default_rng(seed).uniform(0, 1, (8, channels, size, size)).astype(np.float32)


def _jax_logits(model, variables, images_nchw) -> np.ndarray:
  return np.asarray(model.apply(variables, jnp.asarray(images_nchw.transpose(0, 2, 3, 1)),
                                train=False))


def _torch_logits(module, images_nchw) -> np.ndarray:
  with torch.no_grad():
    return module(torch.from_numpy(images_nchw)).numpy()


def _max_diff(a, b) -> float:
  return float(np.max(np.abs(a - b)))


@pytest.fixture(scope='module')
def lenet():
  return LeNet5(), _random_variables(LeNet5(), 28, 1, seed=1)


@pytest.fixture(scope='module')
def resnet():
  model = ResNet20()
  return model, _random_variables(model, 32, 3, seed=2)


def _to_torch(name: str, variables: dict):
  mean_std = {'mean': ResNet20.mean, 'std': ResNet20.std} if name == 'resnet20' else {}
  state = export.to_torch_state_dict(name, variables, **mean_std)
  module = torch_models.build_model(name, **export.architecture(name, variables['params']))
  module.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()}, strict=True)
  return module.eval()


def test_lenet5_logits_match(lenet):
  model, variables = lenet
  images = _images(28, 1)
  jax_logits = _jax_logits(model, variables, images)
  diff = _max_diff(jax_logits, _torch_logits(_to_torch('lenet5', variables), images))
  print(f'lenet5: max |logit diff| {diff:.2e}, logit std {jax_logits.std():.2f}')
  assert jax_logits.std() > 100 * TOLERANCE  # a wrong field would show
  assert diff <= TOLERANCE


def test_resnet20_logits_match_with_batch_norm_statistics(resnet):
  model, variables = resnet
  images = _images(32, 3)
  jax_logits = _jax_logits(model, variables, images)
  diff = _max_diff(jax_logits, _torch_logits(_to_torch('resnet20', variables), images))
  print(f'resnet20: max |logit diff| {diff:.2e}, logit std {jax_logits.std():.2f}')
  assert jax_logits.std() > 100 * TOLERANCE  # a wrong field would show
  assert diff <= TOLERANCE
  # The statistics matter: the same weights with fresh BN statistics give other logits.
  fresh = _to_torch('resnet20', {**variables, 'batch_stats': jax.tree_util.tree_map(
      lambda v: np.ones_like(v) if v.ndim else v, variables['batch_stats'])})
  assert _max_diff(jax_logits, _torch_logits(fresh, images)) > 100 * TOLERANCE


def test_state_dict_names_are_pytorch_style(resnet):
  state = export.to_torch_state_dict('resnet20', resnet[1], mean=ResNet20.mean,
                                     std=ResNet20.std)
  assert state['conv1.weight'].shape == (16, 3, 3, 3)  # OIHW
  assert state['layer2.0.conv1.weight'].shape == (32, 16, 3, 3)
  assert state['layer3.2.bn2.running_var'].shape == (64,)
  assert state['fc.weight'].shape == (10, 64)  # (out, in)
  assert state['bn1.num_batches_tracked'].dtype == np.int64
  expected = {name: tuple(t.shape) for name, t in torch_models.ResNet20().state_dict().items()}
  assert {name: array.shape for name, array in state.items()} == expected


def test_safetensors_round_trip(resnet, tmp_path):
  model, variables = resnet
  path = str(tmp_path / 'sub' / 'model.safetensors')
  state = export.to_torch_state_dict('resnet20', variables, mean=ResNet20.mean,
                                     std=ResNet20.std, num_batches_tracked=7)
  export.save_safetensors(state, path, export.export_metadata(
      'resnet20', variables['params'], eps=8 / 255))
  # Readable like any other output file (the writer alone would leave it 0600).
  assert os.stat(path).st_mode & 0o777 == 0o666 & ~export.current_umask()
  loaded = export.load_torch_model(path)
  assert not loaded.training
  assert int(loaded.layer3[2].bn2.num_batches_tracked) == 7
  assert loaded.export_metadata['input_layout'] == 'NCHW'
  assert float(loaded.export_metadata['eps']) == pytest.approx(8 / 255)
  images = _images(32, 3, seed=4)
  assert _max_diff(_jax_logits(model, variables, images),
                   _torch_logits(loaded, images)) <= TOLERANCE


def _workdir(path, model_name: str, states: dict, best_step: int | None = None) -> str:
  """A training workdir with config.json and {step: variables} checkpoints."""
  os.makedirs(path, exist_ok=True)
  with open(os.path.join(path, 'config.json'), 'w') as f:
    json.dump({'model': model_name, 'eps': 0.3, 'method': 'pgd',
               'data': {'name': 'mnist', 'manual_dir': ''}}, f)
  checkpoints = Checkpoints(str(path), keep=2)
  for step, variables in states.items():
    state = {'step': np.int32(step), **variables}
    checkpoints.save(step, state)
    if step == best_step:
      checkpoints.save_if_best(step, state, {'val_robust_accuracy': 0.5})
  checkpoints.close()
  return str(path)


def test_export_workdir_best_and_latest(lenet, tmp_path):
  model, best = lenet
  latest = _random_variables(model, 28, 1, seed=5)
  workdir = _workdir(tmp_path / 'run', 'lenet5', {1: best, 2: latest}, best_step=1)
  images = _images(28, 1, seed=6)
  for which, variables, step in (('best', best, 1), ('latest', latest, 2)):
    path = os.path.join(workdir, f'{which}.safetensors')
    metadata = export.export_workdir(workdir, path, checkpoint=which)
    assert metadata['checkpoint'] == f'{which} step {step}'
    assert metadata['eps'] == '0.3' and metadata['model'] == 'lenet5'
    assert _max_diff(_jax_logits(model, variables, images),
                     _torch_logits(export.load_torch_model(path), images)) <= TOLERANCE


def test_export_workdir_errors_name_the_path(lenet, tmp_path):
  missing = str(tmp_path / 'missing')
  with pytest.raises(export.ExportError, match='missing'):
    export.export_workdir(missing, missing + '/m.safetensors')
  empty = _workdir(tmp_path / 'empty', 'lenet5', {})
  with pytest.raises(export.ExportError, match=r'no best checkpoint in .*empty'):
    export.export_workdir(empty, empty + '/m.safetensors')
  wrong = _workdir(tmp_path / 'wrong', 'resnet20', {1: lenet[1]})
  with pytest.raises(export.ExportError, match='is not a resnet20'):
    export.export_workdir(wrong, wrong + '/m.safetensors')


def test_cli_missing_workdir_is_one_error_line(tmp_path):
  missing = str(tmp_path / 'nope')
  result = subprocess.run(
      [sys.executable, os.path.join(ROOT, 'export.py'), f'--workdir={missing}'],
      cwd=ROOT, capture_output=True, text=True, timeout=60, check=False)
  assert result.returncode != 0
  assert result.stderr.strip().splitlines()[-1] == f"error: workdir '{missing}' is not a directory"
  assert 'Traceback' not in result.stderr
