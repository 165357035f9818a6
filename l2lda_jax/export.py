"""Exports a trained classifier as a PyTorch state dict in a safetensors file.

Third-party robustness suites (AutoAttack, RobustBench) take PyTorch modules, so a run
is handed to them as `l2lda_jax/torch_models.py` + this file's output:

  python export.py --workdir=runs/cifar10 --output=runs/cifar10/model.safetensors
  model = load_torch_model('runs/cifar10/model.safetensors')   # needs torch

The conversion is plain numpy and writes through `safetensors.numpy`: exporting needs no
torch. Only `load_torch_model` imports it (docs/EXPORT.md).
"""

import collections.abc
import json
import os
import re
from typing import Any, Iterator, Mapping

import numpy as np
from safetensors import numpy as safetensors_numpy
from safetensors import safe_open

FORMAT_VERSION = '1'
# The image sizes the JAX models are built for: LeNet-5's fc1 needs 28x28 inputs.
IMAGE_SIZE = {'lenet5': 28, 'resnet20': 32}


class ExportError(ValueError):
  """A workdir, checkpoint or parameter tree that cannot be exported; one-line message."""


# ----------------------------------------------------------------------------- conversion
def conv_weight(kernel: np.ndarray) -> np.ndarray:
  """Flax HWIO (k, k, c_in, c_out) -> PyTorch OIHW. Both cross-correlate."""
  return np.transpose(kernel, (3, 2, 0, 1))


def dense_weight(kernel: np.ndarray) -> np.ndarray:
  """Flax Dense (in, out) -> PyTorch Linear (out, in)."""
  return np.transpose(kernel)


def _leaves(tree: Mapping, prefix: tuple = ()) -> Iterator[tuple[tuple, Any]]:
  for key, value in tree.items():
    if isinstance(value, collections.abc.Mapping):
      yield from _leaves(value, prefix + (key,))
    else:
      yield prefix + (key,), value


def torch_module_name(model: str, flax_path: tuple) -> str:
  """The PyTorch module path of the Flax module at `flax_path` (the leaf name excluded).

  LeNet-5 uses the same names on both sides; ResNet-20 maps stem_conv/stem_bn to
  conv1/bn1 and stage{s}_block{b} to layer{s+1}.{b}, as PyTorch CIFAR ResNets name them.
  """
  head, rest = flax_path[0], list(flax_path[1:])
  if model == 'resnet20':
    block = re.fullmatch(r'stage(\d+)_block(\d+)', head)
    if block:
      head = f'layer{int(block.group(1)) + 1}.{int(block.group(2))}'
    else:
      head = {'stem_conv': 'conv1', 'stem_bn': 'bn1'}.get(head, head)
  return '.'.join([head] + rest)


def _torch_param(leaf: str, value: np.ndarray) -> tuple[str, np.ndarray]:
  if leaf == 'kernel':
    return 'weight', conv_weight(value) if value.ndim == 4 else dense_weight(value)
  if leaf == 'scale':  # BatchNorm gamma
    return 'weight', value
  if leaf == 'bias':
    return 'bias', value
  raise ExportError(f'unexpected parameter {leaf!r}')


_BN_STATS = {'mean': 'running_mean', 'var': 'running_var'}


def to_torch_state_dict(model: str, variables: Mapping, mean=None, std=None,
                        num_batches_tracked: int = 0) -> dict[str, np.ndarray]:
  """Flax variables {'params', 'batch_stats'} -> a flat PyTorch state dict of numpy arrays.

  `mean`/`std` (ResNet-20's input normalisation) become the `mean`/`std` buffers.
  `num_batches_tracked` only fills torch's BatchNorm bookkeeping buffer (unused in eval).
  """
  state = {}
  for path, value in _leaves(variables['params']):
    name, array = _torch_param(path[-1], np.asarray(value, np.float32))
    state[f'{torch_module_name(model, path[:-1])}.{name}'] = array
  bn_modules = set()
  for path, value in _leaves(variables.get('batch_stats') or {}):
    if path[-1] not in _BN_STATS:
      raise ExportError(f'unexpected batch statistic {path[-1]!r}')
    module = torch_module_name(model, path[:-1])
    state[f'{module}.{_BN_STATS[path[-1]]}'] = np.asarray(value, np.float32)
    bn_modules.add(module)
  for module in bn_modules:
    state[f'{module}.num_batches_tracked'] = np.array(num_batches_tracked, np.int64)
  if mean is not None:
    state['mean'] = np.asarray(mean, np.float32)
    state['std'] = np.asarray(std, np.float32)
  # safetensors writes raw buffers: C-contiguous copies (ascontiguousarray would turn the
  # 0-d num_batches_tracked into shape (1,)).
  return {name: np.array(array, order='C') for name, array in sorted(state.items())}


def architecture(model: str, params: Mapping) -> dict:
  """Constructor arguments of the PyTorch module, read off the parameter shapes."""
  if model == 'lenet5':
    return {'in_channels': int(np.shape(params['conv1']['kernel'])[2]),
            'num_classes': int(np.shape(params['fc2']['kernel'])[1])}
  if model == 'resnet20':
    blocks = [re.fullmatch(r'stage(\d+)_block(\d+)', name) for name in params]
    blocks = [(int(m.group(1)), int(m.group(2))) for m in blocks if m]
    stages = sorted({stage for stage, _ in blocks})
    return {'in_channels': int(np.shape(params['stem_conv']['kernel'])[2]),
            'num_classes': int(np.shape(params['fc']['kernel'])[1]),
            'stage_widths': [int(np.shape(params[f'stage{s}_block0']['conv1']['kernel'])[3])
                             for s in stages],
            'blocks_per_stage': max(block for _, block in blocks) + 1}
  raise ExportError(f'unknown model {model!r}; choose lenet5 or resnet20')


def export_metadata(model: str, params: Mapping, **extra) -> dict[str, str]:
  """safetensors metadata (strings only): what a user needs to rebuild and attack it."""
  metadata = {'format': 'pt', 'exporter': 'l2lda_jax', 'format_version': FORMAT_VERSION,
              'model': model, 'architecture': json.dumps(architecture(model, params)),
              'input_layout': 'NCHW', 'input_range': '[0, 1]',
              'normalization': 'inside the model' if model == 'resnet20' else 'none',
              'output': 'logits'}
  metadata.update({key: str(value) for key, value in extra.items() if value is not None})
  return metadata


def current_umask() -> int:
  """The process umask, read without setting it (os.umask would, for a moment, for every
  thread)."""
  try:
    with open('/proc/self/status') as f:
      for line in f:
        if line.startswith('Umask:'):
          return int(line.split()[1], 8)
  except OSError:
    pass
  mask = os.umask(0o022)  # no /proc (macOS): read it by setting it, then restore it
  os.umask(mask)
  return mask


def save_safetensors(state_dict: Mapping[str, np.ndarray], path: str,
                     metadata: Mapping[str, str]) -> None:
  """Writes the state dict and its metadata; creates the parent folder."""
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  safetensors_numpy.save_file(dict(state_dict), path, metadata=dict(metadata))
  # The writer creates the file 0600; a model file is shared like any other output.
  os.chmod(path, 0o666 & ~current_umask())


def read_metadata(path: str) -> dict[str, str]:
  """The metadata of an exported file (no torch needed)."""
  with safe_open(path, framework='numpy') as f:
    return dict(f.metadata() or {})


def load_torch_model(path: str, device: str = 'cpu'):
  """The PyTorch module of an exported file, weights loaded (strict), in eval mode."""
  import torch  # pylint: disable=g-import-not-at-top  (optional extra)
  from safetensors.torch import load_file  # pylint: disable=g-import-not-at-top
  from l2lda_jax import torch_models  # pylint: disable=g-import-not-at-top
  metadata = read_metadata(path)
  if 'model' not in metadata or 'architecture' not in metadata:
    raise ExportError(f'{path!r} is not a file written by l2lda_jax export')
  model = torch_models.build_model(metadata['model'], **json.loads(metadata['architecture']))
  model.load_state_dict(load_file(path, device=device), strict=True)
  model.export_metadata = metadata  # plain attribute: not part of the state dict
  return model.to(torch.device(device)).eval()


# ----------------------------------------------------------------------------- workdirs
def _read_config(workdir: str) -> dict:
  path = os.path.join(workdir, 'config.json')
  if not os.path.isfile(path):
    raise ExportError(f'no config.json in {workdir!r}: not a training workdir')
  try:
    with open(path) as f:
      return json.load(f)
  except json.JSONDecodeError as e:
    raise ExportError(f'{path!r} is not valid JSON: {e}') from e


def _restore(workdir: str, checkpoint: str) -> tuple[dict, str, int]:
  """(restored tree, 'best'|'latest', step). 'best' falls back to the latest, as init_from."""
  from l2lda_jax import checkpoint as checkpoint_lib  # pylint: disable=g-import-not-at-top
  checkpoints = checkpoint_lib.Checkpoints(workdir, keep=1)
  try:
    # Unreadable checkpoints are reported and skipped, for the newest readable one.
    restored = checkpoints.read(checkpoint)
  except FileNotFoundError:
    raise ExportError(f'no {checkpoint} checkpoint in {workdir!r}') from None
  except checkpoint_lib.CheckpointError as e:
    raise ExportError(str(e)) from None
  finally:
    checkpoints.close()
  return restored.tree, restored.slot, restored.step


def _check_shapes(model: str, variables: Mapping, workdir: str) -> None:
  """Fails in one line when the checkpoint is not a `model` (e.g. a config.json edited)."""
  import jax  # pylint: disable=g-import-not-at-top
  from l2lda_jax.models import create_classifier  # pylint: disable=g-import-not-at-top
  mismatch = ExportError(f'the checkpoint in {workdir!r} is not a {model} '
                         '(config.json field model)')
  try:
    arch = architecture(model, variables['params'])
  except (KeyError, IndexError, ValueError) as e:
    raise mismatch from e
  size = IMAGE_SIZE[model]
  expected = jax.eval_shape(
      create_classifier(model, arch['num_classes']).init, jax.random.PRNGKey(0),
      jax.ShapeDtypeStruct((1, size, size, arch['in_channels']), np.float32))
  shapes = lambda tree: {path: tuple(np.shape(v)) for path, v in _leaves(tree)}
  for collection in ('params', 'batch_stats'):
    if shapes(expected.get(collection, {})) != shapes(variables.get(collection) or {}):
      raise mismatch


def export_workdir(workdir: str, output_path: str, checkpoint: str = 'best') -> dict[str, str]:
  """Exports a run's best (else latest) or latest checkpoint; returns the file's metadata."""
  if checkpoint not in ('best', 'latest'):
    raise ExportError(f'checkpoint must be best or latest, not {checkpoint!r}')
  if not os.path.isdir(workdir):
    raise ExportError(f'workdir {workdir!r} is not a directory')
  config = _read_config(workdir)
  model = config.get('model')
  if model not in IMAGE_SIZE:
    raise ExportError(f'config.json in {workdir!r}: unknown model {model!r}')
  restored, kind, step = _restore(workdir, checkpoint)
  variables = {'params': restored['params'], 'batch_stats': restored.get('batch_stats') or {}}
  _check_shapes(model, variables, workdir)
  normalisation = {}
  if model == 'resnet20':
    from l2lda_jax.models import ResNet20  # pylint: disable=g-import-not-at-top
    normalisation = {'mean': ResNet20.mean, 'std': ResNet20.std}
  state_dict = to_torch_state_dict(model, variables, num_batches_tracked=step, **normalisation)
  data = config.get('data') or {}
  metadata = export_metadata(
      model, variables['params'], eps=config.get('eps'), dataset=data.get('name'),
      lossy_data=str(data.get('name') == 'cifar10' and bool(data.get('manual_dir'))).lower(),
      method=config.get('method'), checkpoint=f'{kind} step {step}')
  save_safetensors(state_dict, output_path, metadata)
  return metadata
