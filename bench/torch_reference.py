"""PyTorch-eager reference training steps, for bench/benchmark.py only.

Torch is a benchmark-only dependency (torch 2.13 CPU); nothing in l2lda_jax imports this
file. It holds the same two MNIST training iterations as the JAX code, written the plain
eager way, so that the benchmark can compare step times on the same machine:

  make_l2lda_step  one L2L-DA iteration: generator ascent through the T-step recursive
                   attack, then the classifier update (SPEC sections 1, 2, 4).
  make_pgd_step    one PGD-k adversarial-training iteration of LeNet-5 (Madry et al.).

Both run on fixed random data held inside the closure (no data loading, no augmentation).

  nice -n 19 python bench/torch_reference.py   # a smoke check at tiny shapes
"""

import contextlib
import os

import torch
from torch import nn
import torch.nn.functional as F

from bench.step_timer import time_step
from l2lda_jax.torch_models import LeNet5  # the export's module, same architecture

LEARNING_RATE = 0.01
MOMENTUM = 0.9
WEIGHT_DECAY = 1e-5
GRAD_CLIP_NORM = 1.0
GRAD_NORM_EPS = 1e-15  # inside the norm, as the authors' code
Z_DIM = 8


# ----------------------------------------------------------------------------- networks
class ConditionalBatchNorm2d(nn.Module):
  """BatchNorm without affine, then gamma_shared + gamma[y], beta_shared + beta[y] (SPEC 2)."""

  def __init__(self, features: int, num_classes: int):
    super().__init__()
    self.norm = nn.BatchNorm2d(features, eps=1e-10, momentum=0.1, affine=False)
    self.gamma_shared = nn.Parameter(1.0 + 0.02 * torch.randn(features))
    self.beta_shared = nn.Parameter(torch.zeros(features))
    self.gamma_class = nn.Parameter(0.02 * torch.randn(num_classes, features))
    self.beta_class = nn.Parameter(torch.zeros(num_classes, features))

  def forward(self, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    gamma = self.gamma_shared + self.gamma_class[labels]
    beta = self.beta_shared + self.beta_class[labels]
    return self.norm(x) * gamma[:, :, None, None] + beta[:, :, None, None]


class Generator(nn.Module):
  """The U-Net of SPEC section 2 on concat[x, gn, delta]; returns the pre-tanh direction.

  H and W must be divisible by 4 (28 -> 14 -> 7 -> 14 -> 28 on MNIST, 32 -> 8 -> 32 on CIFAR).
  """

  def __init__(self, channels: int, num_classes: int = 10, width: int = 64,
               z_dim: int = Z_DIM):
    super().__init__()
    w = width
    self.z_fc1 = nn.Linear(z_dim, z_dim)
    self.z_fc2 = nn.Linear(z_dim, z_dim)
    self.down0 = nn.Conv2d(3 * channels + z_dim, w, 3, 1, 1, bias=False)
    self.down1 = nn.Conv2d(w + z_dim, w, 4, 2, 1, bias=False)
    self.down1_bn = ConditionalBatchNorm2d(w, num_classes)
    self.down2 = nn.Conv2d(w + z_dim, 2 * w, 4, 2, 1, bias=False)
    self.up2 = nn.ConvTranspose2d(2 * w, w, 4, 2, 1, bias=False)
    self.up2_bn = ConditionalBatchNorm2d(w, num_classes)
    self.up1 = nn.ConvTranspose2d(2 * w, w, 4, 2, 1, bias=False)
    self.up1_bn = ConditionalBatchNorm2d(w, num_classes)
    self.final = nn.Conv2d(2 * w, channels, 3, 1, 1, bias=False)
    self._init_weights()

  def _init_weights(self):
    """Conv weights N(0, 0.02); linears Xavier-uniform (biases left at PyTorch's default)."""
    for module in self.modules():
      if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
        nn.init.normal_(module.weight, 0.0, 0.02)
      elif isinstance(module, nn.Linear):
        nn.init.xavier_uniform_(module.weight)

  def forward(self, inputs: torch.Tensor, z: torch.Tensor,
              labels: torch.Tensor) -> torch.Tensor:
    z_features = F.relu(self.z_fc2(F.relu(self.z_fc1(z))))

    def with_z(h):
      tiled = z_features[:, :, None, None].expand(-1, -1, h.shape[2], h.shape[3])
      return torch.cat([h, tiled], dim=1)

    d0 = F.leaky_relu(self.down0(with_z(inputs)), 0.2)
    d1 = F.leaky_relu(self.down1_bn(self.down1(with_z(d0)), labels), 0.2)
    d2 = F.leaky_relu(self.down2(with_z(d1)), 0.2)
    u2 = torch.cat([F.relu(self.up2_bn(self.up2(d2), labels)), d1], dim=1)
    u1 = torch.cat([F.relu(self.up1_bn(self.up1(u2), labels)), d0], dim=1)
    return self.final(u1)


# ----------------------------------------------------------------------------- shared pieces
def make_optimizer(module: nn.Module) -> torch.optim.SGD:
  """SGD lr 0.01, momentum 0.9, weight decay 1e-5 (SPEC section 4)."""
  return torch.optim.SGD(module.parameters(), lr=LEARNING_RATE, momentum=MOMENTUM,
                         weight_decay=WEIGHT_DECAY)


def descend(loss: torch.Tensor, module: nn.Module, optimizer: torch.optim.Optimizer):
  """Backward, clip the gradient norm at 1.0 (before weight decay, SPEC 4), one SGD step."""
  optimizer.zero_grad(set_to_none=True)
  loss.backward()
  nn.utils.clip_grad_norm_(module.parameters(), GRAD_CLIP_NORM)
  optimizer.step()


@contextlib.contextmanager
def frozen_eval(module: nn.Module):
  """Inference mode (running BN stats) and no parameter gradients, for the attack phase."""
  module.eval()
  module.requires_grad_(False)
  try:
    yield module
  finally:
    module.requires_grad_(True)
    module.train()


def input_gradient(classifier: nn.Module, x_adv: torch.Tensor,
                   labels: torch.Tensor) -> torch.Tensor:
  """d CE_mean(f(x_adv), y) / d x_adv, detached: no second-order terms (SPEC section 1)."""
  x_in = x_adv.detach().requires_grad_(True)
  loss = F.cross_entropy(classifier(x_in), labels)
  return torch.autograd.grad(loss, x_in, create_graph=False)[0]


def random_batch(batch: int, image_shape: tuple, num_classes: int, generator: torch.Generator,
                 device: str = 'cpu') -> tuple[torch.Tensor, torch.Tensor]:
  """uint8-valued random images scaled to [0, 1], and random labels, on `device`."""
  images = torch.randint(0, 256, (batch,) + tuple(image_shape), generator=generator) / 255.0
  labels = torch.randint(0, num_classes, (batch,), generator=generator)
  return images.to(device), labels.to(device)


def classifier_for(image_shape: tuple, num_classes: int) -> LeNet5:
  """LeNet-5 for 28 x 28 inputs; the CIFAR ResNet-20 is not part of this reference."""
  if tuple(image_shape[1:]) != (28, 28):
    raise ValueError(f'LeNet-5 (SPEC section 3) takes 28x28 images, got {image_shape}')
  return LeNet5(image_shape[0], num_classes)


# ----------------------------------------------------------------------------- L2L-DA
def normalize_gradient(grad: torch.Tensor) -> torch.Tensor:
  """grad / ||grad + 1e-15||_2, the norm per sample and channel over H x W (SPEC section 1)."""
  return grad / (grad + GRAD_NORM_EPS).norm(dim=(2, 3), keepdim=True)


def diversity_loss(x_adv: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
  """L_div on the doubled batch [x; x] with latents [z1; z2] (SPEC section 1)."""
  half = x_adv.shape[0] // 2
  image_distance = (x_adv[:half] - x_adv[half:]).abs().mean(dim=(1, 2, 3))
  latent_distance = (z[:half] - z[half:]).abs().mean(dim=1)
  return (image_distance / (latent_distance + 1e-8)).mean()


def generator_objective(generator, classifier, x, labels, z, *, steps: int, eps: float,
                        lam: float) -> tuple[torch.Tensor, torch.Tensor]:
  """L_G = sum_{t=1..T} [CE_mean(f(x_adv_t), y) + lam * L_div,t] and x_adv_T (SPEC 1).

  delta_{t+1} = clip(delta_t + eps/4 * tanh(G(x, gn_t, delta_t; z, y)), -eps, eps), with
  delta carried un-detached so that L_G backpropagates through the whole chain.
  """
  delta = torch.zeros_like(x)
  x_adv = x
  objective = x.new_zeros(())
  for _ in range(steps):
    gn = normalize_gradient(input_gradient(classifier, x_adv, labels))
    direction = generator(torch.cat([x, gn, delta], dim=1), z, labels)
    delta = torch.clamp(delta + (eps / 4) * torch.tanh(direction), -eps, eps)
    x_adv = torch.clamp(x + delta, 0.0, 1.0)
    objective = (objective + F.cross_entropy(classifier(x_adv), labels)
                 + lam * diversity_loss(x_adv, z))
  return objective, x_adv


def make_l2lda_step(batch: int = 100, T: int = 10, width: int = 64,
                    image_shape: tuple = (1, 28, 28), num_classes: int = 10,
                    eps: float = 0.3, lam: float = 0.02, seed: int = 0, device: str = 'cpu'):
  """One L2L-DA training iteration (paper Algorithm 1; SPEC sections 1, 2, 4).

  Returns (step_fn, info). step_fn() draws z = [z1; z2], ascends the generator on L_G
  (generator in train mode, classifier in eval mode), then updates the classifier (train
  mode) on [x; x_adv_T(z1); x_adv_T(z2)] made by the pre-update generator. It returns
  detached tensors: the doubled clean batch 'x', 'x_adv' (x_adv_T), 'generator_objective'
  and 'classifier_loss'.
  """
  torch.manual_seed(seed)
  data_rng = torch.Generator().manual_seed(seed)
  classifier = classifier_for(image_shape, num_classes).to(device)
  generator = Generator(image_shape[0], num_classes, width).to(device)
  classifier_opt, generator_opt = make_optimizer(classifier), make_optimizer(generator)
  x, y = random_batch(batch, image_shape, num_classes, data_rng, device)
  x2, y2 = torch.cat([x, x]), torch.cat([y, y])
  classifier_labels = torch.cat([y, y2])

  def step_fn() -> dict:
    z = torch.randn(2 * batch, Z_DIM, device=device)
    generator.train()
    with frozen_eval(classifier):
      objective, x_adv = generator_objective(generator, classifier, x2, y2, z, steps=T,
                                             eps=eps, lam=lam)
      descend(-objective, generator, generator_opt)
    x_adv = x_adv.detach()
    loss = F.cross_entropy(classifier(torch.cat([x, x_adv])), classifier_labels)
    descend(loss, classifier, classifier_opt)
    return {'x': x2, 'x_adv': x_adv, 'generator_objective': objective.detach(),
            'classifier_loss': loss.detach()}

  info = {'batch': batch, 'doubled_batch': 2 * batch, 'classifier_batch': 3 * batch,
          'image_shape': tuple(image_shape), 'steps': T, 'width': width, 'z_dim': Z_DIM,
          'num_classes': num_classes, 'eps': eps, 'lam': lam}
  return step_fn, info


# ----------------------------------------------------------------------------- PGD-k
def pgd_attack(classifier: nn.Module, x: torch.Tensor, labels: torch.Tensor, *,
               eps: float, steps: int, step_size: float) -> torch.Tensor:
  """PGD-k from a uniform start in the eps-ball, projected to the ball and [0, 1] each step."""
  x_adv = torch.clamp(x + torch.empty_like(x).uniform_(-eps, eps), 0.0, 1.0)
  for _ in range(steps):
    x_adv = x_adv + step_size * input_gradient(classifier, x_adv, labels).sign()
    x_adv = torch.clamp(torch.minimum(torch.maximum(x_adv, x - eps), x + eps), 0.0, 1.0)
  return x_adv


def make_pgd_step(batch: int = 100, k: int = 10, eps: float = 0.3, seed: int = 0,
                  device: str = 'cpu'):
  """One PGD-k adversarial-training iteration of LeNet-5 (step eps/4; SPEC sections 3, 4, 5).

  Returns (step_fn, info); step_fn() returns detached 'x', 'x_adv' and 'classifier_loss'.
  """
  image_shape, num_classes = (1, 28, 28), 10
  torch.manual_seed(seed)
  data_rng = torch.Generator().manual_seed(seed)
  classifier = LeNet5(image_shape[0], num_classes).to(device)
  optimizer = make_optimizer(classifier)
  x, y = random_batch(batch, image_shape, num_classes, data_rng, device)
  classifier_labels = torch.cat([y, y])

  def step_fn() -> dict:
    with frozen_eval(classifier):
      x_adv = pgd_attack(classifier, x, y, eps=eps, steps=k, step_size=eps / 4)
    loss = F.cross_entropy(classifier(torch.cat([x, x_adv])), classifier_labels)
    descend(loss, classifier, optimizer)
    return {'x': x, 'x_adv': x_adv, 'classifier_loss': loss.detach()}

  info = {'batch': batch, 'classifier_batch': 2 * batch, 'image_shape': image_shape,
          'steps': k, 'eps': eps}
  return step_fn, info


def main():
  """Smoke check at tiny shapes (batch 8, T 2, width 8)."""
  torch.set_num_threads(os.cpu_count())
  l2lda_step, l2lda_info = make_l2lda_step(batch=8, T=2, width=8)
  pgd_step, pgd_info = make_pgd_step(batch=8, k=2)
  for name, step_fn, info in (('l2lda', l2lda_step, l2lda_info), ('pgd', pgd_step, pgd_info)):
    result = time_step(step_fn, warmup=1, repeats=3)
    print(f"{name} {info}: median {result['median'] * 1e3:.1f} ms, "
          f"min {result['min'] * 1e3:.1f} ms")


if __name__ == '__main__':
  main()
