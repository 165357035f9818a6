"""AutoAttack's standard sequence: the survivor bookkeeping, its warnings, evaluate.py's
`autoattack` rows (resume, saved examples), and agreement with torchattacks' AutoAttack."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tiny_mlp import CLASSES, accuracy, fit_tiny_mlp, one_torch_thread, torch_mlp

from l2lda_jax.attacks import autoattack

EPS = 0.3


# ----------------------------------------------------------------------------- the sequence
def test_a_stage_batch_covers_its_survivors_in_as_many_batches_with_least_padding():
  from l2lda_jax.robustness import balanced_batch_size
  assert balanced_batch_size(885, 500) == 443  # 2 x 443 = 886 rows, not 2 x 500
  assert balanced_batch_size(1000, 500) == 500 and balanced_batch_size(7, 500) == 7
  for n in range(1, 1600):
    size = balanced_batch_size(n, 500)
    batches = -(-n // size)
    assert size <= 500 and batches == -(-n // 500)
    assert batches * size - n < batches  # under one padded row per batch


def _fake_stage_runner(breaks: dict, calls: list):
  """Stage s breaks exactly the examples in breaks[s]; records which examples it saw."""

  def run_stage(stage, alive):
    calls.append((stage, alive.tolist()))
    correct = ~np.isin(alive, breaks[stage])
    return correct, np.zeros((len(alive), 2))

  return run_stage


BREAKS = {'apgd-ce': [0, 1], 'apgd-t': [1, 2], 'fab-t': [], 'square': [3, 5]}


def test_each_stage_runs_only_on_the_survivors_of_the_earlier_ones():
  calls = []
  clean = np.array([True] * 6 + [False])  # example 6 is misclassified clean: never attacked
  results = autoattack.run_sequence(_fake_stage_runner(BREAKS, calls), clean)
  assert [stage for stage, _ in calls] == list(autoattack.STANDARD_STAGES)
  assert calls[0][1] == [0, 1, 2, 3, 4, 5]
  assert calls[1][1] == [2, 3, 4, 5]  # 0 and 1 fell to APGD-CE
  assert calls[3][1] == [3, 4, 5]
  robust = [r.robust.tolist() for r in results]
  assert robust[-1] == [False, False, False, False, True, False, False]
  for earlier, later in zip(results, results[1:]):  # robust accuracy never rises
    assert not np.any(later.robust & ~earlier.robust)
  assert [r.attacked for r in results] == [6, 4, 3, 3]


def test_a_resumed_sequence_skips_finished_stages_and_ends_the_same():
  clean = np.ones(6, bool)
  full = autoattack.run_sequence(_fake_stage_runner(BREAKS, []), clean)
  done = {r.stage: r.robust for r in full[:2]}
  calls, seen = [], []
  resumed = autoattack.run_sequence(_fake_stage_runner(BREAKS, calls), clean, done=done,
                                    on_stage=lambda r, alive, x: seen.append((r.stage, r.resumed)))
  assert [stage for stage, _ in calls] == ['fab-t', 'square']
  assert seen == [('apgd-ce', True), ('apgd-t', True), ('fab-t', False), ('square', False)]
  assert [r.robust.tolist() for r in resumed] == [r.robust.tolist() for r in full]


def test_masking_warning_counts_what_square_broke_after_the_gradient_stages():
  results = autoattack.run_sequence(_fake_stage_runner(BREAKS, []), np.ones(6, bool))
  warning = autoattack.masking_warning(results)
  assert warning.startswith('Square broke 2 example(s)') and '33.33 pp' in warning
  quiet = autoattack.run_sequence(_fake_stage_runner({**BREAKS, 'square': []}, []),
                                  np.ones(6, bool))
  assert autoattack.masking_warning(quiet) is None


def test_autoattack_warns_on_probabilities_and_on_zero_gradients():
  """The warnings come from `--checks`' own functions: probabilities fail the logits check,
  a thresholded model fails the zero-gradient check, a linear model passes both."""
  from l2lda_jax import data as data_lib
  from l2lda_jax.robustness import autoattack_input_warnings
  images = np.asarray(jax.random.randint(jax.random.PRNGKey(1), (6, 3, 3, 1), 0, 256), np.uint8)
  split = data_lib.Split(images, np.array([0, 1, 0, 1, 0, 1], np.int32))
  w = jax.random.normal(jax.random.PRNGKey(2), (9, 2)) * 3
  linear = lambda v: v.reshape(v.shape[0], -1) @ w
  # A pixel sum below 100 gives constant logits (outside [0, 1]), so no gradient at all.
  flat = lambda v: jnp.where(v.sum((1, 2, 3))[:, None] > 100, linear(v), -5.0)
  assert autoattack_input_warnings(linear, split, batch_size=4) == []
  [probability] = autoattack_input_warnings(lambda v: jax.nn.softmax(linear(v)), split, 4)
  assert probability.startswith('outputs_are_logits failed')
  [zero] = autoattack_input_warnings(flat, split, 4)
  assert zero.startswith('zero_input_gradients failed') and '100.00%' in zero


# ----------------------------------------------------------------------------- torchattacks
@pytest.fixture(scope='module')
def tiny_mlp():
  return fit_tiny_mlp()


AGREEMENT_EPS = 0.05  # on the tiny MLP: APGD-CE leaves about a quarter robust (test_apgd.py)


def _our_sequence(logits_fn, x, y, key):
  stages = autoattack.stage_attacks(AGREEMENT_EPS)
  x_np = np.asarray(x)

  def run_stage(stage, alive):
    x_adv = stages[stage](logits_fn, jnp.asarray(x_np[alive]), y[alive],
                          jax.random.fold_in(key, autoattack.STANDARD_STAGES.index(stage)))
    return np.asarray(jnp.argmax(logits_fn(x_adv), -1) == y[alive]), x_adv

  clean = np.asarray(jnp.argmax(logits_fn(x), -1) == y)
  return autoattack.run_sequence(run_stage, clean)


def test_standard_sequence_agrees_with_torchattacks_autoattack(tiny_mlp):
  """The same weights and images: robust accuracy after the whole sequence within 1 pp (two
  of 200 examples) of torchattacks' AutoAttack (standard, Linf); the two codes draw
  different random starts and squares."""
  torchattacks = pytest.importorskip('torchattacks')
  import torch
  params, logits_fn, x, y = tiny_mlp
  ours = _our_sequence(logits_fn, x, y, jax.random.PRNGKey(0))
  with one_torch_thread():
    attack = torchattacks.AutoAttack(torch_mlp(params), norm='Linf', eps=AGREEMENT_EPS,
                                     version='standard', n_classes=CLASSES, seed=0)
    for component in attack._autoattack.attacks[:3]:  # its default is 10 iterations
      component.steps = 100  # AutoAttack's standard version
    x_torch = torch.from_numpy(np.asarray(x).transpose(0, 3, 1, 2).copy())
    x_adv = attack(x_torch, torch.from_numpy(np.array(y)).long())
    theirs = float((torch_mlp(params)(x_adv).argmax(-1).numpy() == np.asarray(y)).mean())
  robust = float(np.mean(ours[-1].robust))
  print(f'AutoAttack robust accuracy: l2lda_jax {robust:.4f}, torchattacks {theirs:.4f}; '
        f'clean {accuracy(logits_fn, x, y):.4f}')
  assert 0.05 < robust < accuracy(logits_fn, x, y) - 0.3  # it breaks the undefended model
  assert abs(robust - theirs) <= 0.01
