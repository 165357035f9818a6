"""Sanity checks of an adversarial evaluation (`evaluate.py --checks`).

They catch a broken evaluation rather than a weak model: an attack that ignores
eps, gradient masking (zero, shattered or deceptive gradients), a model that
outputs probabilities, a forward pass that is random or depends on the rest of
its batch, and adversarial examples outside the threat model.

Every check is a pure function of a classifier `logits_fn: float NHWC images in
[0, 1] -> logits` and data (x float32 in [0, 1], y integer labels) and returns
a `CheckResult`; `format_check` prints it as `pass`/`FAIL` with its number.
Data are evaluated in fixed-size batches (the last one padded), so each jitted
function compiles once per shape.

Attacks here are `Attack = (logits_fn, x, y, key, eps) -> x_adv` with eps a
traced argument: one compilation serves a whole eps grid. Every attack of a run
uses the same key per batch (common random numbers), so accuracies compared
across eps or step counts differ by the attack, not by the random start.
Accuracies are fractions in [0, 1]; tolerances are in percentage points (pp).

The checks come in two layers: `*_result` functions compare numbers that are
already measured (run_checks measures each attack once and shares it), and
`check_*` functions measure and compare.
"""

import dataclasses
from typing import Callable, Mapping, NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from l2lda_jax import attacks
from l2lda_jax.attack_specs import pgd_step_size

LogitsFn = Callable[[jax.Array], jax.Array]
Attack = Callable[..., jax.Array]  # (logits_fn, x, y, key, eps) -> x_adv

PERTURBATION_TOLERANCE = 1e-6  # float32 rounding of x +- eps stays far below this
BATCH_TOLERANCE = 1e-4         # relative logit change allowed from the rest of the batch


@dataclasses.dataclass(frozen=True)
class CheckResult:
  """One check: its name, the verdict, the number it was decided on, and a readable line."""
  name: str
  passed: bool
  value: float
  detail: str


def format_check(result: CheckResult) -> str:
  """`pass  name: detail` or `FAIL  name: detail`."""
  return f"{'pass' if result.passed else 'FAIL'}  {result.name}: {result.detail}"


def _pct(accuracy: float) -> str:
  return f'{100 * accuracy:.2f}%'


# --- attacks with a traced eps ---------------------------------------------------------------


def default_step_ratio(steps: int) -> float:
  """PGD step / eps: evaluate.py's rule (attack_specs.pgd_step_size, SPEC section 6)."""
  return pgd_step_size(1.0, steps)


def fgsm_attack(logits_fn: LogitsFn, x, y, key, eps):
  """FGSM as an `Attack`."""
  return attacks.fgsm(logits_fn, x, y, key, eps=eps)


def pgd_attack(steps: int, step_ratio: Optional[float] = None) -> Attack:
  """PGD-`steps` with random start and step `step_ratio * eps` as an `Attack`, keeping each
  example's best iterate as evaluate.py's PGD rows do: a model whose iterates pass through a
  misclassified point and come back is broken there (the last iterate hid that, so on a
  masked model the large-eps check failed for the attack, not for the model)."""
  ratio = default_step_ratio(steps) if step_ratio is None else step_ratio

  def attack(logits_fn, x, y, key, eps):
    return attacks.pgd(logits_fn, x, y, key, eps=eps, steps=steps, step_size=ratio * eps,
                       best_iterate=True)

  return attack


# --- batched evaluation ----------------------------------------------------------------------


def _pad(a: np.ndarray, size: int) -> np.ndarray:
  """Repeats the last row up to `size` rows: every batch has one shape, so one compilation."""
  if len(a) == size:
    return a
  return np.concatenate([a, np.repeat(a[-1:], size - len(a), axis=0)])


def _map_batches(fn, arrays: Sequence[np.ndarray], batch_size: int) -> tuple:
  """fn(start, *batch) -> per-example outputs, over fixed-size batches, concatenated."""
  n = len(arrays[0])
  size = max(1, min(batch_size, n))
  parts = []
  for start in range(0, n, size):
    count = min(size, n - start)
    batch = [_pad(np.asarray(a[start:start + size]), size) for a in arrays]
    parts.append([np.asarray(out)[:count] for out in fn(start, *batch)])
  return tuple(np.concatenate(outputs) for outputs in zip(*parts))


def perturbation_violation(x, x_adv, eps, xp=jnp):
  """Per example: how far x_adv leaves the eps-ball around x or [0, 1] (0 inside, inf for NaN).

  `xp` is jnp inside jit, np for arrays on the host.
  """
  outside = xp.maximum(xp.abs(x_adv - x) - eps, xp.maximum(-x_adv, x_adv - 1.0))
  outside = xp.where(xp.isnan(x_adv), xp.inf, outside)
  worst = xp.max(outside.reshape(outside.shape[0], -1), axis=1)
  return xp.maximum(worst, 0.0)


class Outcome(NamedTuple):
  """Per-example results of one attack at one eps."""
  correct: np.ndarray    # bool: still classified correctly
  violation: np.ndarray  # float: perturbation_violation of the attack's output

  @property
  def accuracy(self) -> float:
    return float(np.mean(self.correct))


def attack_outcomes(logits_fn: LogitsFn, x, y, key, *, attack: Optional[Attack],
                    eps_values: Sequence[float], batch_size: int) -> list[Outcome]:
  """Per-example outcomes of `attack` (None: clean) at each eps, one compilation for all.

  Batch b uses fold_in(key, start of b) at every eps.
  """

  @jax.jit
  def run(xb, yb, key_b, eps):
    x_adv = xb if attack is None else attack(logits_fn, xb, yb, key_b, eps)
    correct = jnp.argmax(logits_fn(x_adv), axis=-1) == yb
    return correct, perturbation_violation(xb, x_adv, eps)

  outcomes = []
  for eps in eps_values:
    eps_arr = jnp.float32(eps)
    fn = lambda start, xb, yb: run(xb, yb, jax.random.fold_in(key, start), eps_arr)
    outcomes.append(Outcome(*_map_batches(fn, (x, y), batch_size)))
  return outcomes


def _accuracies(logits_fn, x, y, key, attack, eps_values, batch_size) -> list[float]:
  return [o.accuracy for o in attack_outcomes(logits_fn, x, y, key, attack=attack,
                                              eps_values=eps_values, batch_size=batch_size)]


def _clean_correct(logits_fn, x, y, batch_size) -> np.ndarray:
  return attack_outcomes(logits_fn, x, y, jax.random.PRNGKey(0), attack=None,
                         eps_values=[0.0], batch_size=batch_size)[0].correct


# --- comparisons of measured numbers ---------------------------------------------------------


def eps_zero_result(clean_correct: np.ndarray,
                    attacked_correct: Mapping[str, np.ndarray]) -> CheckResult:
  """Every attack at eps = 0 leaves every example's correctness as it is clean.

  Value: the most examples whose correctness differs, over the attacks. FAIL means
  the attack moves images at eps = 0 (it ignores or overrides eps, or projects
  wrongly) or the attacked path evaluates the model differently from the clean path
  (only a logit near-tie could flip from rounding alone).
  """
  clean_accuracy = float(np.mean(clean_correct))
  differ = {name: int(np.sum(c != clean_correct)) for name, c in attacked_correct.items()}
  worst = max(differ, key=differ.get)
  parts = ', '.join(f'{name} {_pct(np.mean(c))}' for name, c in attacked_correct.items())
  detail = f'at eps=0 {parts} vs clean {_pct(clean_accuracy)}; {differ[worst]} examples differ'
  if differ[worst]:
    detail += f' ({worst})'
  return CheckResult('eps_zero_equals_clean', differ[worst] == 0, float(differ[worst]), detail)


def monotone_result(eps_grid: Sequence[float], accuracies: Sequence[float], *,
                    attack_name: str = 'PGD', tolerance_pp: float = 0.0) -> CheckResult:
  """Accuracy never rises as eps grows over the grid.

  Value: the largest rise in pp from any eps to a larger one. FAIL means a larger
  threat model made the attack weaker: gradient masking (the random start or the
  steps land where gradients are flat or misleading) or an attack that ignores eps.
  """
  order = np.argsort(np.asarray(eps_grid, float), kind='stable')
  eps_sorted = [float(eps_grid[i]) for i in order]
  acc = np.asarray(accuracies, float)[order]
  rises = [acc[j] - np.min(acc[:j]) for j in range(1, len(acc))]
  rise_pp = 100 * max([0.0] + rises)
  curve = ', '.join(f'{e:g}: {_pct(a)}' for e, a in zip(eps_sorted, acc))
  detail = f'{attack_name} accuracy by eps [{curve}]; largest rise {rise_pp:.2f} pp'
  return CheckResult('accuracy_monotone_in_eps', bool(rise_pp <= tolerance_pp), float(rise_pp),
                     detail)


def pgd_vs_fgsm_result(pgd_accuracy: float, fgsm_accuracy: float, *, pgd_name: str = 'PGD',
                       tolerance_pp: float = 0.0) -> CheckResult:
  """PGD leaves no more examples correct than FGSM at the same eps.

  Value: PGD minus FGSM accuracy in pp. FAIL means the iterative attack is stuck
  where one large step is not: a loss surface with local bumps or flat regions
  (gradient masking), or a PGD step size that is too small.
  """
  gap_pp = 100 * (pgd_accuracy - fgsm_accuracy)
  passed = bool(gap_pp <= tolerance_pp)
  sign = '<=' if passed else '>'
  detail = f'{pgd_name} {_pct(pgd_accuracy)} {sign} FGSM {_pct(fgsm_accuracy)}'
  return CheckResult('pgd_not_weaker_than_fgsm', passed, float(gap_pp), detail)


def steps_converged_result(accuracy_k: float, accuracy_2k: float, *, steps: int,
                           tolerance_pp: float = 0.5) -> CheckResult:
  """Doubling the PGD steps changes accuracy by less than `tolerance_pp`.

  Value: |acc(PGD-2k) - acc(PGD-k)| in pp. FAIL means PGD-k has not converged, so
  its accuracy overstates robustness (too few steps, too small a step, or a
  surface that slows the attack down). With n examples one example is 100/n pp:
  use n > 200 for the default 0.5 pp to allow any difference.
  """
  change_pp = 100 * abs(accuracy_2k - accuracy_k)
  detail = (f'PGD-{steps} {_pct(accuracy_k)} vs PGD-{2 * steps} {_pct(accuracy_2k)}: '
            f'{change_pp:.2f} pp (limit < {tolerance_pp:g} pp)')
  return CheckResult('pgd_steps_converged', bool(change_pp < tolerance_pp), float(change_pp),
                     detail)


def large_eps_result(accuracy: float, *, eps: float, attack_name: str = 'PGD',
                     max_accuracy: float = 0.10) -> CheckResult:
  """At a large eps (0.5 on MNIST, where every image can be moved to uniform gray)
  accuracy is at most `max_accuracy`.

  Value: the accuracy. FAIL means the attack cannot reach images that exist inside
  the ball: gradient masking or a broken attack, not robustness.
  """
  detail = f'{attack_name} at eps={eps:g}: {_pct(accuracy)} (limit {_pct(max_accuracy)})'
  return CheckResult('large_eps_breaks_model', bool(accuracy <= max_accuracy), float(accuracy),
                     detail)


def perturbation_result(worst: Mapping[str, float], *,
                        tolerance: float = PERTURBATION_TOLERANCE) -> CheckResult:
  """Every adversarial example lies inside its eps-ball (Linf) and in [0, 1].

  `worst` maps an attack's name to its largest perturbation_violation. Value: the
  largest over all attacks. FAIL means an attack outside the threat model, whose
  accuracies are not comparable with anything.
  """
  if not worst:
    return CheckResult('perturbations_in_threat_model', True, 0.0, 'no adversarial examples')
  name = max(worst, key=worst.get)
  value = float(worst[name])
  detail = (f'worst violation {value:.3g} ({name}) over {len(worst)} attacks '
            f'(limit {tolerance:g})')
  return CheckResult('perturbations_in_threat_model', value <= tolerance, value, detail)


def square_after_gradient_result(correct: Mapping[str, np.ndarray],
                                 gradient_attacks: Sequence[str], score_attacks: Sequence[str],
                                 *, tolerance_pp: float = 0.5) -> CheckResult:
  """A score-based attack (Square) breaks almost no example that every gradient attack
  left correct (AutoAttack's flag for possible gradient masking).

  `correct` maps an evaluation row to its per-example correctness. Value: the share, in
  pp of all examples, that survived every gradient attack and fell to a score-based one.
  FAIL means the gradients point away from adversarial examples that exist, so the
  gradient attacks' accuracies overstate robustness.
  """
  survived = np.logical_and.reduce([np.asarray(correct[n], bool) for n in gradient_attacks])
  held = np.logical_and.reduce([np.asarray(correct[n], bool) for n in score_attacks])
  found = survived & ~held
  value_pp = 100 * float(np.mean(found))
  detail = (f'{" + ".join(score_attacks)} broke {int(found.sum())} of the {int(survived.sum())} '
            f'examples that {" + ".join(gradient_attacks)} left correct: {value_pp:.2f} pp '
            f'(limit < {tolerance_pp:g} pp)')
  return CheckResult('square_after_gradient', bool(value_pp < tolerance_pp), value_pp, detail)


# --- checks that measure ---------------------------------------------------------------------


def check_eps_zero(logits_fn: LogitsFn, x, y, key, *, batch_size: int,
                   attacks_at_zero: Optional[Mapping[str, Attack]] = None) -> CheckResult:
  """eps = 0 gives exactly the clean accuracy, example by example (see eps_zero_result).

  `attacks_at_zero` defaults to FGSM and PGD-10.
  """
  if attacks_at_zero is None:
    attacks_at_zero = {'FGSM': fgsm_attack, 'PGD-10': pgd_attack(10)}
  attacked = {
      name: attack_outcomes(logits_fn, x, y, key, attack=attack, eps_values=[0.0],
                            batch_size=batch_size)[0].correct
      for name, attack in attacks_at_zero.items()}
  return eps_zero_result(_clean_correct(logits_fn, x, y, batch_size), attacked)


def check_monotone_in_eps(logits_fn: LogitsFn, x, y, key, *, eps_grid: Sequence[float],
                          batch_size: int, steps: int = 10, step_ratio: Optional[float] = None,
                          tolerance_pp: float = 0.0) -> CheckResult:
  """PGD-`steps` accuracy does not rise along `eps_grid` (see monotone_result)."""
  accuracies = _accuracies(logits_fn, x, y, key, pgd_attack(steps, step_ratio), eps_grid,
                           batch_size)
  return monotone_result(eps_grid, accuracies, attack_name=f'PGD-{steps}',
                         tolerance_pp=tolerance_pp)


def check_pgd_not_weaker_than_fgsm(logits_fn: LogitsFn, x, y, key, *, eps: float,
                                   batch_size: int, steps: int = 10,
                                   step_ratio: Optional[float] = None) -> CheckResult:
  """PGD-`steps` accuracy <= FGSM accuracy at eps (see pgd_vs_fgsm_result)."""
  (pgd_acc,) = _accuracies(logits_fn, x, y, key, pgd_attack(steps, step_ratio), [eps],
                           batch_size)
  (fgsm_acc,) = _accuracies(logits_fn, x, y, key, fgsm_attack, [eps], batch_size)
  return pgd_vs_fgsm_result(pgd_acc, fgsm_acc, pgd_name=f'PGD-{steps}')


def check_pgd_steps_converged(logits_fn: LogitsFn, x, y, key, *, eps: float, batch_size: int,
                              steps: int = 10, step_ratio: Optional[float] = None,
                              tolerance_pp: float = 0.5) -> CheckResult:
  """PGD-k and PGD-2k (same step rule, same random start) agree (see steps_converged_result)."""
  ratio = default_step_ratio(steps) if step_ratio is None else step_ratio
  (acc_k,) = _accuracies(logits_fn, x, y, key, pgd_attack(steps, ratio), [eps], batch_size)
  (acc_2k,) = _accuracies(logits_fn, x, y, key, pgd_attack(2 * steps, ratio), [eps],
                          batch_size)
  return steps_converged_result(acc_k, acc_2k, steps=steps, tolerance_pp=tolerance_pp)


def check_large_eps(logits_fn: LogitsFn, x, y, key, *, large_eps: float, batch_size: int,
                    steps: int = 10, step_ratio: Optional[float] = None,
                    max_accuracy: float = 0.10) -> CheckResult:
  """PGD-`steps` at `large_eps` leaves at most `max_accuracy` (see large_eps_result)."""
  (accuracy,) = _accuracies(logits_fn, x, y, key, pgd_attack(steps, step_ratio), [large_eps],
                            batch_size)
  return large_eps_result(accuracy, eps=large_eps, attack_name=f'PGD-{steps}',
                          max_accuracy=max_accuracy)


def check_zero_gradients(logits_fn: LogitsFn, x, y, *, batch_size: int,
                         max_share: float = 0.01) -> CheckResult:
  """The share of examples whose input gradient of the CE loss is exactly zero (or not
  finite) is at most `max_share`.

  Value: that share. Gradient attacks cannot move such an example at all: FAIL means
  gradient masking (quantised or thresholded inputs, argmax or stop_gradient in the
  forward pass, softmax saturated past float32 precision).
  """

  @jax.jit
  def flags(xb, yb):
    loss = lambda v: jnp.sum(attacks.cross_entropy(logits_fn(v), yb))
    grad = jax.grad(loss)(xb).reshape(xb.shape[0], -1)
    return jnp.all(grad == 0, axis=1), ~jnp.all(jnp.isfinite(grad), axis=1)

  zero, nonfinite = _map_batches(lambda _, xb, yb: flags(xb, yb), (x, y), batch_size)
  share = float(np.mean(zero | nonfinite))
  detail = (f'{_pct(share)} of examples with zero or non-finite input gradient '
            f'({int(zero.sum())} zero, {int(nonfinite.sum())} non-finite; limit {_pct(max_share)})')
  return CheckResult('zero_input_gradients', share <= max_share, share, detail)


def check_outputs_are_logits(logits_fn: LogitsFn, x, *, batch_size: int) -> CheckResult:
  """The model outputs logits, not probabilities.

  Criterion: FAIL if every output entry lies in [0, 1], which covers softmax and
  per-class sigmoid outputs; real logits of a batch of data take values outside
  [0, 1] (log-probabilities, all <= 0, pass: they are valid logits). Value: the
  share of rows with all entries in [0, 1]. FAIL means the attacks' cross-entropy
  is taken of probabilities: its gradients are squashed and PGD/CW are weakened.
  """

  @jax.jit
  def stats(xb):
    out = logits_fn(xb)
    return (jnp.min(out, axis=1), jnp.max(out, axis=1),
            jnp.abs(jnp.sum(out, axis=1) - 1.0))

  row_min, row_max, sum_error = _map_batches(lambda _, xb: stats(xb), (x,), batch_size)
  in_unit = (row_min >= 0) & (row_max <= 1)
  share = float(np.mean(in_unit))
  sums_to_one = float(np.mean(in_unit & (sum_error <= 1e-3)))
  detail = (f'outputs in [{row_min.min():.3g}, {row_max.max():.3g}]; {_pct(share)} of rows '
            f'inside [0, 1], {_pct(sums_to_one)} of rows are probability vectors')
  return CheckResult('outputs_are_logits', share < 1.0, share, detail)


def _rows_differ(a: np.ndarray, b: np.ndarray) -> np.ndarray:
  same = (a == b) | (np.isnan(a) & np.isnan(b))
  return ~np.all(same.reshape(len(a), -1), axis=1)


def check_deterministic(logits_fn: LogitsFn, x, *, batch_size: int) -> CheckResult:
  """Two forward passes on the same input give bitwise-equal logits.

  `logits_fn` is called as given, not under a new jit: Python-side randomness would
  be frozen into a trace. Value: the number of examples whose logits differ. FAIL
  means a random forward pass (dropout left on, noise): accuracies become random
  and gradients of a random function mislead attacks.
  """
  def twice(_, xb):
    xb = jnp.asarray(xb)
    return (_rows_differ(np.asarray(logits_fn(xb)), np.asarray(logits_fn(xb))),)

  (differ,) = _map_batches(twice, (x,), batch_size)
  count = int(differ.sum())
  detail = f'{count} of {len(differ)} examples differ between two forward passes'
  return CheckResult('forward_deterministic', count == 0, float(count), detail)


def check_batch_independent(logits_fn: LogitsFn, x, *, batch_size: int,
                            tolerance: float = BATCH_TOLERANCE) -> CheckResult:
  """An example's logits do not depend on the other examples in its batch.

  Each batch's first half is evaluated next to its own second half and next to that
  half inverted (1 - x): same shape, same compiled program. Value: the largest logit
  change relative to 1 + max |logit|. FAIL means batch statistics in the forward pass
  (BatchNorm in training mode, batch-wise normalisation): results then depend on
  batch composition and padding, and attacks see a different function per batch.
  """
  forward = jax.jit(logits_fn)

  @jax.jit
  def change(xb):
    half = xb.shape[0] // 2
    own = forward(xb)[:half]
    swapped = forward(jnp.concatenate([xb[:half], 1.0 - xb[half:]]))[:half]
    scale = 1.0 + jnp.max(jnp.abs(own))
    return (jnp.max(jnp.abs(own - swapped), axis=tuple(range(1, own.ndim))) / scale,)

  if min(batch_size, len(x)) < 2:
    return CheckResult('batch_independent', True, 0.0, 'skipped: needs batches of 2 or more')
  (rel,) = _map_batches(lambda _, xb: change(xb), (x,), batch_size)
  value = float(rel.max()) if len(rel) else 0.0
  detail = (f'largest relative logit change from the rest of the batch {value:.3g} '
            f'(limit {tolerance:g})')
  return CheckResult('batch_independent', value <= tolerance, value, detail)


def worst_violations(x, adversarials: Mapping[str, np.ndarray], eps: float) -> dict:
  """name -> largest perturbation_violation of that attack's examples (host, float64)."""
  x = np.asarray(x, np.float64)
  return {name: float(np.max(perturbation_violation(x, np.asarray(x_adv, np.float64), eps,
                                                    xp=np), initial=0.0))
          for name, x_adv in adversarials.items()}


def check_perturbations(x, adversarials: Mapping[str, np.ndarray], eps: float, *,
                        tolerance: float = PERTURBATION_TOLERANCE) -> CheckResult:
  """Every array in `adversarials` (name -> x_adv, aligned with x) is inside the Linf
  eps-ball around x and inside [0, 1], within `tolerance` (see perturbation_result)."""
  return perturbation_result(worst_violations(x, adversarials, eps), tolerance=tolerance)


# --- everything ------------------------------------------------------------------------------


def default_eps_grid(eps: float, large_eps: float) -> list[float]:
  """0, eps/4, eps/2, 3 eps/4, eps and large_eps, sorted, without repeats."""
  return sorted({0.0, eps / 4, eps / 2, 3 * eps / 4, eps, large_eps})


def run_checks(logits_fn: LogitsFn, x, y, key, *, eps: float, large_eps: float, pgd_steps: int,
               batch_size: int, adversarials: Optional[Mapping[str, np.ndarray]] = None,
               step_ratio: Optional[float] = None, eps_grid: Optional[Sequence[float]] = None,
               max_large_eps_accuracy: float = 0.10, max_zero_gradient_share: float = 0.01,
               converged_tolerance_pp: float = 0.5) -> list[CheckResult]:
  """All checks, each attack run once and shared.

  PGD-`pgd_steps` (step `step_ratio * eps`, default as SPEC section 6) runs over the
  eps grid (default_eps_grid; eps = 0, eps and large_eps are always in it), FGSM at
  0 and eps, PGD-2k at eps, all with the same key. `adversarials` (name -> x_adv at
  `eps`, aligned with x) from other attacks join the perturbation check, beside
  every attack run here. Determinism is checked on the first batch only: it runs
  the model outside jit.
  """
  x = np.asarray(x, np.float32)
  y = np.asarray(y)
  eps, large_eps = float(eps), float(large_eps)  # grid entries are dict keys below
  ratio = default_step_ratio(pgd_steps) if step_ratio is None else step_ratio
  if eps_grid is None:
    eps_grid = default_eps_grid(eps, large_eps)
  grid = sorted({float(e) for e in eps_grid} | {0.0, eps, large_eps})
  name_k, name_2k = f'PGD-{pgd_steps}', f'PGD-{2 * pgd_steps}'
  outcomes = lambda attack, eps_values: dict(zip(eps_values, attack_outcomes(
      logits_fn, x, y, key, attack=attack, eps_values=eps_values, batch_size=batch_size)))

  clean = outcomes(None, [0.0])[0.0]
  pgd = outcomes(pgd_attack(pgd_steps, ratio), grid)
  fgsm = outcomes(fgsm_attack, [0.0, eps])
  pgd_2k = outcomes(pgd_attack(2 * pgd_steps, ratio), [eps])[eps]

  worst = {f'{name_k} eps={e:g}': float(o.violation.max()) for e, o in pgd.items()}
  worst.update({f'FGSM eps={e:g}': float(o.violation.max()) for e, o in fgsm.items()})
  worst[f'{name_2k} eps={eps:g}'] = float(pgd_2k.violation.max())
  worst.update(worst_violations(x, adversarials or {}, eps))

  return [
      eps_zero_result(clean.correct, {'FGSM': fgsm[0.0].correct, name_k: pgd[0.0].correct}),
      monotone_result(grid, [pgd[e].accuracy for e in grid], attack_name=name_k),
      pgd_vs_fgsm_result(pgd[eps].accuracy, fgsm[eps].accuracy, pgd_name=name_k),
      steps_converged_result(pgd[eps].accuracy, pgd_2k.accuracy, steps=pgd_steps,
                             tolerance_pp=converged_tolerance_pp),
      large_eps_result(pgd[large_eps].accuracy, eps=large_eps, attack_name=name_k,
                       max_accuracy=max_large_eps_accuracy),
      check_zero_gradients(logits_fn, x, y, batch_size=batch_size,
                           max_share=max_zero_gradient_share),
      check_outputs_are_logits(logits_fn, x, batch_size=batch_size),
      check_deterministic(logits_fn, x[:batch_size], batch_size=batch_size),
      check_batch_independent(logits_fn, x, batch_size=batch_size),
      perturbation_result(worst),
  ]
