"""APGD and APGD-T (Croce and Hein, ICML 2020): schedule, DLR losses, threat model, strength
on an undefended tiny MLP, and agreement with torchattacks on the same weights."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from l2lda_jax import attacks
from l2lda_jax.attacks import apgd
from tests.tiny_mlp import CLASSES, accuracy, fit_tiny_mlp, one_torch_thread, torch_mlp

# ----------------------------------------------------------------------------- schedule
def test_checkpoints_for_100_iterations_are_the_published_ones():
  # Paper: p_0 = 0, p_1 = 0.22, p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06), by hand:
  # 0.22, 0.41, 0.57, 0.70, 0.80, 0.87, 0.93, 0.99 (next 1.05 > 1); w_j = ceil(100 p_j).
  np.testing.assert_array_equal(apgd.checkpoints(100), [22, 41, 57, 70, 80, 87, 93, 99])
  np.testing.assert_array_equal(apgd.checkpoints(1000),
                                [220, 410, 570, 700, 800, 870, 930, 990])
  # Short budgets: windows of max(int(0.22 n), 1), then never shorter than 1.
  np.testing.assert_array_equal(apgd.checkpoints(10), [2, 3, 4, 5, 6, 7, 8, 9, 10])
  windows = apgd.window_lengths(100)
  assert windows.shape == (101,)
  np.testing.assert_array_equal(np.flatnonzero(windows), apgd.checkpoints(100))
  np.testing.assert_array_equal(windows[windows > 0], [22, 19, 16, 13, 10, 7, 6, 6])


# ----------------------------------------------------------------------------- losses
def test_dlr_losses_on_hand_made_logits():
  logits = jnp.array([[1.0, 3.0, 2.0, 0.5], [1.0, 3.0, 2.0, 0.5]])
  # Sorted: 3, 2, 1, 0.5. Row 0, y = 0: -(1 - 3) / (3 - 1) = 1 (misclassified: > 0).
  # Row 1, y = 1: -(3 - 2) / (3 - 1) = -0.5.
  np.testing.assert_allclose(apgd.dlr_loss(logits, jnp.array([0, 1])), [1.0, -0.5], rtol=1e-6)
  # Targeted, y = 1: t = 2: -(3 - 2) / (3 - (1 + 0.5) / 2) = -1 / 2.25; t = 3: -2.5 / 2.25.
  np.testing.assert_allclose(
      apgd.dlr_targeted_loss(logits, jnp.array([1, 1]), jnp.array([2, 3])),
      [-1 / 2.25, -2.5 / 2.25], rtol=1e-6)
  # Shift and scale invariance (the point of the ratio).
  np.testing.assert_allclose(apgd.dlr_loss(7.0 * logits - 3.0, jnp.array([0, 1])),
                             [1.0, -0.5], rtol=1e-5)
  with pytest.raises(ValueError, match='at least 3 classes'):
    apgd.dlr_loss(jnp.zeros((1, 2)), jnp.zeros((1,), jnp.int32))


def test_dlr_losses_match_torchattacks():
  torch = pytest.importorskip('torch')
  torchattacks = pytest.importorskip('torchattacks')
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(32, 10)).astype(np.float32) * 3
  y, t = rng.integers(0, 10, 32), rng.integers(0, 10, 32)
  model = torch.nn.Identity()
  ours = apgd.dlr_loss(jnp.asarray(logits), jnp.asarray(y))
  theirs = torchattacks.APGD(model).dlr_loss(torch.from_numpy(logits), torch.from_numpy(y))
  np.testing.assert_allclose(ours, theirs.numpy(), rtol=1e-5, atol=1e-6)
  ours = apgd.dlr_targeted_loss(jnp.asarray(logits), jnp.asarray(y), jnp.asarray(t))
  theirs = torchattacks.APGDT(model).dlr_loss_targeted(
      torch.from_numpy(logits), torch.from_numpy(y), torch.from_numpy(t))
  np.testing.assert_allclose(ours, theirs.numpy(), rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------- threat model
def _saturated_images(n=6, hw=8, channels=3, seed=1):
  """Uniform images where about a third of the pixels sit exactly at 0 or at 1."""
  x = jax.random.uniform(jax.random.PRNGKey(seed), (n, hw, hw, channels))
  return jnp.clip(x * 1.6 - 0.3, 0.0, 1.0)


def _linear_logits_fn(dim, seed=0, classes=10):
  w = jax.random.normal(jax.random.PRNGKey(seed), (dim, classes)) * 0.3
  return lambda x: x.reshape(x.shape[0], -1) @ w


@pytest.mark.parametrize('norm, eps, loss, targeted', [
    ('Linf', 0.05, 'ce', False), ('L2', 0.5, 'dlr', False),
    ('Linf', 0.05, None, True), ('L2', 0.5, None, True)])
def test_outputs_stay_in_the_eps_ball_and_pixel_box(norm, eps, loss, targeted):
  x = _saturated_images()
  assert float(jnp.mean((x == 0) | (x == 1))) > 0.2  # the box clip is exercised
  logits_fn = _linear_logits_fn(x[0].size)
  y = jnp.argmax(logits_fn(x), -1)  # all correctly classified: all attacked
  if targeted:
    run = functools.partial(apgd.apgd_targeted_run, logits_fn, eps=eps, norm=norm, n_iter=10,
                            n_target_classes=3)
  else:
    run = functools.partial(apgd.apgd_run, logits_fn, eps=eps, norm=norm, n_iter=10, loss=loss,
                            n_restarts=2)
  result = jax.jit(run)(x, y, jax.random.PRNGKey(3))
  delta = (result.x_adv - x).reshape(x.shape[0], -1)
  size = jnp.max(jnp.abs(delta), -1) if norm == 'Linf' else jnp.linalg.norm(delta, axis=-1)
  assert float(jnp.max(size)) <= eps * (1 + 1e-5)
  assert float(result.x_adv.min()) >= 0.0 and float(result.x_adv.max()) <= 1.0
  assert float(jnp.min(size)) > 0.5 * eps  # every example did move, and far
  np.testing.assert_array_equal(result.success, jnp.argmax(logits_fn(result.x_adv), -1) != y)


def test_already_misclassified_examples_are_returned_as_they_are():
  x = _saturated_images()
  logits_fn = _linear_logits_fn(x[0].size)
  y = jnp.argmax(logits_fn(x), -1).at[:2].add(1) % 10  # rows 0 and 1 wrong at x
  result = jax.jit(functools.partial(apgd.apgd_run, logits_fn, eps=0.05, n_iter=5))(
      x, y, jax.random.PRNGKey(0))
  np.testing.assert_array_equal(result.x_adv[:2], x[:2])
  assert bool(jnp.all(result.success[:2])) and bool(jnp.all(result.loss[:2] == -jnp.inf))
  assert bool(jnp.all(jnp.isfinite(result.loss[2:])))


# ----------------------------------------------------------------------------- tiny MLP
EPS = 0.05  # Linf; clean accuracy 100%, APGD-CE leaves about a quarter robust
N_ITER = 100




@pytest.fixture(scope='module')
def tiny_mlp():
  return fit_tiny_mlp()



@pytest.fixture(scope='module')
def apgd_ce_result(tiny_mlp):
  _, logits_fn, x, y = tiny_mlp
  return jax.jit(functools.partial(apgd.apgd_run, logits_fn, eps=EPS, n_iter=N_ITER))(
      x, y, jax.random.PRNGKey(0))


def test_apgd_ce_breaks_an_undefended_mlp_and_beats_pgd(tiny_mlp, apgd_ce_result):
  _, logits_fn, x, y = tiny_mlp
  clean = accuracy(logits_fn, x, y)
  robust = accuracy(logits_fn, apgd_ce_result.x_adv, y)
  assert clean >= 0.95
  assert robust <= 0.5 * clean
  assert robust == pytest.approx(1.0 - float(jnp.mean(apgd_ce_result.success)))
  # PGD with the same number of gradient steps, a usual step size, keeping the best iterate.
  x_pgd = jax.jit(functools.partial(attacks.pgd, logits_fn, eps=EPS, steps=N_ITER,
                                    step_size=EPS / 4, best_iterate=True))(
      x, y, jax.random.PRNGKey(0))
  pgd_robust = accuracy(logits_fn, x_pgd, y)
  print(f'clean {clean:.4f}, APGD-CE-{N_ITER} {robust:.4f}, PGD-{N_ITER} {pgd_robust:.4f}')
  assert pgd_robust < clean  # PGD is a real baseline here
  assert robust <= pgd_robust
  # A robust example comes back as its highest-loss point, with that loss.
  robust_rows = ~apgd_ce_result.success
  ce = attacks.cross_entropy(logits_fn(apgd_ce_result.x_adv), y)
  np.testing.assert_allclose(ce[robust_rows], apgd_ce_result.loss[robust_rows], rtol=1e-4)


# ----------------------------------------------------------------------------- torchattacks
# Tolerance of the comparisons with torchattacks: the two codes draw different random
# starts (and differ in the corner cases listed in apgd.py's docstring), so only the
# examples whose fate depends on the start can differ. Measured on this model and these
# 200 images over seeds 0-4, each implementation's robust accuracy moved by at most
# 2.5 pp (5 images) between seeds for APGD-CE, 0 for APGD-T, and the two implementations'
# seed-averaged accuracies agreed within 0.5 pp. 5 pp (10 images) covers two independent
# draws at that spread while still failing for, e.g., a missing momentum or step halving.
TORCH_TOLERANCE = 0.05




def _torch_robust_accuracy(attack_cls, params, x, y, **kwargs):
  import torch
  model = torch_mlp(params)
  images = torch.from_numpy(np.array(x)).permute(0, 3, 1, 2).contiguous()
  labels = torch.from_numpy(np.array(y)).long()
  attack = attack_cls(model, norm='Linf', eps=EPS, steps=N_ITER, n_restarts=1, seed=0,
                      **kwargs)
  attack.set_device('cpu')
  with one_torch_thread():
    adv = attack(images, labels)
  with torch.no_grad():
    assert float((adv - images).abs().max()) <= EPS + 1e-6
    return float((model(adv).argmax(1) == labels).float().mean())


def test_apgd_ce_agrees_with_torchattacks(tiny_mlp, apgd_ce_result):
  torchattacks = pytest.importorskip('torchattacks')
  params, logits_fn, x, y = tiny_mlp
  ours = accuracy(logits_fn, apgd_ce_result.x_adv, y)
  theirs = _torch_robust_accuracy(torchattacks.APGD, params, x, y, loss='ce')
  print(f'APGD-CE robust accuracy: l2lda_jax {ours:.4f}, torchattacks {theirs:.4f}')
  assert 0.05 < theirs < 0.9  # a regime where the attack's strength shows
  assert abs(ours - theirs) <= TORCH_TOLERANCE


def test_apgd_targeted_agrees_with_torchattacks(tiny_mlp):
  torchattacks = pytest.importorskip('torchattacks')
  params, logits_fn, x, y = tiny_mlp
  result = jax.jit(functools.partial(apgd.apgd_targeted_run, logits_fn, eps=EPS,
                                     n_iter=N_ITER))(x, y, jax.random.PRNGKey(0))
  ours = accuracy(logits_fn, result.x_adv, y)
  theirs = _torch_robust_accuracy(torchattacks.APGDT, params, x, y, n_classes=CLASSES)
  print(f'APGD-T robust accuracy: l2lda_jax {ours:.4f}, torchattacks {theirs:.4f}')
  assert 0.05 < theirs < 0.9
  assert abs(ours - theirs) <= TORCH_TOLERANCE
  np.testing.assert_array_equal(result.success, jnp.argmax(logits_fn(result.x_adv), -1) != y)


@pytest.mark.parametrize('norm, eps', [('Linf', EPS), ('L2', 0.4)])
def test_one_run_from_torchattacks_start_follows_the_same_path(tiny_mlp, monkeypatch, norm, eps):
  """Given torchattacks' own random start, one APGD-CE run ends with the same best loss,
  per example, as torchattacks' `attack_single_run`: the steps, momentum, projections,
  checkpoints, halvings and resets agree (the corner cases where the codes differ, see
  apgd.py, do not arise for this model and loss). Not for DLR: once an example is
  misclassified its DLR loss can grow without bound, and float32 rounding differences
  between the frameworks then grow with it."""
  torch = pytest.importorskip('torch')
  torchattacks = pytest.importorskip('torchattacks')
  params, logits_fn, x, y = tiny_mlp
  images = torch.from_numpy(np.array(x)).permute(0, 3, 1, 2).contiguous()
  labels = torch.from_numpy(np.array(y)).long()
  attack = torchattacks.APGD(torch_mlp(params), norm=norm, eps=eps, steps=N_ITER, loss='ce')
  attack.set_device('cpu')
  torch.manual_seed(0)  # the start is the first draw of attack_single_run
  t = 2 * torch.rand(images.shape) - 1 if norm == 'Linf' else torch.randn(images.shape)
  size = (t.flatten(1).abs().max(1)[0] if norm == 'Linf' else t.flatten(1).norm(dim=1) + 1e-12)
  start = (images + eps * t / size.reshape(-1, 1, 1, 1)).clamp(0, 1)
  torch.manual_seed(0)
  with one_torch_thread():
    _, robust, their_loss, _ = attack.attack_single_run(images, labels)

  start = jnp.asarray(start.permute(0, 2, 3, 1).numpy())
  monkeypatch.setattr(apgd, 'apgd_start', lambda key, x, eps, norm: start)
  objective = lambda logits: attacks.cross_entropy(logits, y)
  best = jax.jit(lambda x, y: apgd.apgd_single_run(
      objective, logits_fn, x, y, jax.random.PRNGKey(0), jnp.ones(y.shape, bool), eps=eps,
      norm=norm, n_iter=N_ITER))(x, y)
  assert 0.05 < float(robust.float().mean()) < 0.95  # no early stop, both sides of the line
  np.testing.assert_array_equal(best.fooled, ~robust.numpy())
  # Float32 rounding differs (e.g. the L2 projection is written differently), and the
  # trajectories drift apart a little: measured 4e-4 relative at most (2 of 200, L2).
  np.testing.assert_allclose(best.score, their_loss.numpy(), rtol=2e-3, atol=1e-5)
  assert float(np.median(np.abs(np.asarray(best.score) - their_loss.numpy()))) < 1e-5


def test_a_second_restart_only_adds_broken_examples(tiny_mlp, apgd_ce_result):
  # Restart 0 uses `key` itself, so it is the one-restart run; restart 1 attacks the rest.
  _, logits_fn, x, y = tiny_mlp
  two = jax.jit(functools.partial(apgd.apgd_run, logits_fn, eps=EPS, n_iter=N_ITER,
                                  n_restarts=2))(x, y, jax.random.PRNGKey(0))
  once = apgd_ce_result.success
  assert bool(jnp.all(two.success[once]))
  np.testing.assert_array_equal(two.x_adv[once], apgd_ce_result.x_adv[once])
  np.testing.assert_array_equal(two.success, jnp.argmax(logits_fn(two.x_adv), -1) != y)
  print(f'APGD-CE robust accuracy, 1 restart {1 - float(jnp.mean(once)):.4f}, '
        f'2 restarts {1 - float(jnp.mean(two.success)):.4f}')
