"""PyTorch twins of the classifiers in models/classifiers.py, for exported checkpoints.

Only `l2lda_jax.export.load_torch_model` and the tests import this module: torch is an
optional extra, never a dependency of training. Both modules take NCHW images in [0, 1]
(the AutoAttack / RobustBench convention) and return logits; ResNet-20 normalises
inside, exactly as the JAX model does, so an attack's eps stays in pixel units.

State-dict names follow the usual PyTorch CIFAR code (conv1, bn1, layer1.0.conv1, fc),
and export.py maps the Flax names onto them.
"""

from typing import Sequence

import torch
from torch import nn
import torch.nn.functional as F

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)


class LeNet5(nn.Module):
  """LeNet-5 of SPEC section 3: 28x28 inputs, no normalisation."""

  def __init__(self, in_channels: int = 1, num_classes: int = 10):
    super().__init__()
    self.conv1 = nn.Conv2d(in_channels, 6, 5, padding=2)
    self.conv2 = nn.Conv2d(6, 16, 5)
    self.conv3 = nn.Conv2d(16, 120, 5)
    self.fc1 = nn.Linear(120, 84)
    self.fc2 = nn.Linear(84, num_classes)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    x = F.max_pool2d(F.relu(self.conv1(x)), 2)
    x = F.max_pool2d(F.relu(self.conv2(x)), 2)
    x = F.relu(self.conv3(x)).flatten(1)
    return self.fc2(F.relu(self.fc1(x)))


def _batch_norm(features: int) -> nn.BatchNorm2d:
  # Flax momentum 0.9 == PyTorch momentum 0.1; same eps as the JAX model.
  return nn.BatchNorm2d(features, eps=1e-5, momentum=0.1)


class BasicBlock(nn.Module):
  """He et al. BasicBlock with the option-A (parameter-free) shortcut."""

  def __init__(self, in_features: int, features: int, stride: int):
    super().__init__()
    self.stride = stride
    self.extra = features - in_features
    self.conv1 = nn.Conv2d(in_features, features, 3, stride, padding=1, bias=False)
    self.bn1 = _batch_norm(features)
    self.conv2 = nn.Conv2d(features, features, 3, 1, padding=1, bias=False)
    self.bn2 = _batch_norm(features)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    y = F.relu(self.bn1(self.conv1(x)))
    y = self.bn2(self.conv2(y))
    shortcut = x
    if self.stride != 1 or self.extra:
      # Subsample, then zero-pad the new channels equally on both sides (as the JAX model).
      shortcut = x[:, :, ::self.stride, ::self.stride]
      shortcut = F.pad(shortcut, (0, 0, 0, 0, self.extra // 2, self.extra - self.extra // 2))
    return F.relu(y + shortcut)


class ResNet20(nn.Module):
  """CIFAR ResNet-20 with the per-channel mean/std normalisation inside.

  `mean` and `std` are buffers, so an exported file carries the normalisation it was
  trained with.
  """

  def __init__(self, in_channels: int = 3, num_classes: int = 10,
               stage_widths: Sequence[int] = (16, 32, 64), blocks_per_stage: int = 3,
               mean: Sequence[float] = CIFAR10_MEAN, std: Sequence[float] = CIFAR10_STD):
    super().__init__()
    self.register_buffer('mean', torch.tensor(mean, dtype=torch.float32))
    self.register_buffer('std', torch.tensor(std, dtype=torch.float32))
    self.conv1 = nn.Conv2d(in_channels, stage_widths[0], 3, padding=1, bias=False)
    self.bn1 = _batch_norm(stage_widths[0])
    in_features = stage_widths[0]
    for stage, width in enumerate(stage_widths):
      blocks = []
      for block in range(blocks_per_stage):
        stride = 2 if stage > 0 and block == 0 else 1
        blocks.append(BasicBlock(in_features, width, stride))
        in_features = width
      self.add_module(f'layer{stage + 1}', nn.Sequential(*blocks))
    self.num_stages = len(stage_widths)
    self.fc = nn.Linear(in_features, num_classes)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    x = (x - self.mean[:, None, None]) / self.std[:, None, None]
    x = F.relu(self.bn1(self.conv1(x)))
    for stage in range(self.num_stages):
      x = getattr(self, f'layer{stage + 1}')(x)
    return self.fc(x.mean(dim=(2, 3)))


MODELS = {'lenet5': LeNet5, 'resnet20': ResNet20}


def build_model(name: str, **kwargs) -> nn.Module:
  """The PyTorch module for `config.model` name `name`."""
  if name not in MODELS:
    raise ValueError(f'unknown model {name!r}; choose one of {sorted(MODELS)}')
  return MODELS[name](**kwargs)
