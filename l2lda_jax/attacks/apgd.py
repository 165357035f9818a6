"""Auto-PGD (APGD) and its targeted version APGD-T, in Linf and L2.

Croce and Hein, "Reliable evaluation of adversarial robustness with an ensemble of
diverse parameter-free attacks", ICML 2020, Algorithm 1 (APGD) and section 4
(the DLR losses, APGD-T): the gradient attacks at the core of AutoAttack.

APGD is PGD without a step size to tune. Per example, from a random start x_0 in the
threat model S (the eps-ball around x, inside [0, 1]), with eta_0 = 2 eps:

  z_{k+1} = P_S(x_k + eta_k s(grad_k))                        (s: sign in Linf, v/||v||_2 in L2)
  x_{k+1} = P_S(x_k + alpha (z_{k+1} - x_k) + (1 - alpha)(x_k - x_{k-1}))   (alpha = 0.75)

(the first step is the plain projected step, alpha = 1). At the checkpoints w_j
(`checkpoints`), the step size is halved, and the iterate is reset to the point
x_max of highest loss so far, when
  1. fewer than a fraction rho (0.75) of the steps since w_{j-1} raised the loss,
     sum_{i=w_{j-1}}^{w_j - 1} 1[f(x_{i+1}) > f(x_i)] < rho (w_j - w_{j-1}); or
  2. the step size was not halved at w_{j-1} and f_max did not rise since then.
The loss f is the cross-entropy or the DLR loss (`dlr_loss`); APGD-T ascends the
targeted DLR loss (`dlr_targeted_loss`) towards each of the top-k classes in turn.

What comes back per example: the first iterate found misclassified (the start
included), else the point of highest loss. An example the model already
misclassifies at x is returned as x, not attacked (as in AutoAttack). Restarts and
target classes attack only the examples still robust; a whole run is skipped when
none is left, and a run ends early once each of its examples is misclassified.

Schedule: `checkpoints` is the reference code's integer version (AutoAttack's
`autopgd_base.py`, torchattacks' `APGD`): first window max(int(0.22 N), 1), each
next one max(int(0.03 N), 1) shorter, never shorter than max(int(0.06 N), 1).
For N = 100 (and 1000) this is exactly the paper's w_j = ceil(p_j N) with p_0 = 0,
p_1 = 0.22, p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06); for other N the two can
differ by rounding.

Where this differs from the reference codes (each follows the paper's Algorithm 1):
  * condition 1 is the paper's strict `< rho k`; the codes halve at `<= rho k`;
  * at the first checkpoint condition 2 may fire (the step size has not changed since
    w_0 = 0); the codes start with `reduced_last_check = True`, so it never fires there;
  * the first transition counted by condition 1 compares f(x_1) with f(x_0); the codes
    compare it with 0 (their loss history has no entry for x_0);
  * after a reset to x_max, the next transition counted compares with f_max (the paper
    sets x_{k+1} = x_max); the codes compare with the loss of the iterate replaced;
  * a misclassified example keeps the FIRST misclassified iterate (the codes keep the
    last one), and a robust example returns x_max (the codes return x itself);
  * each example's random start and run are those of the whole batch, not of the
    subset still robust (the result differs from the codes' only by the random draws).
As in the codes, the momentum term after a reset is x_max - x_{w_j - 1}.
"""

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from l2lda_jax.attacks.gradient import Best, keep_better, restart_keys
from l2lda_jax.attacks.losses import _label_and_best_other, cross_entropy
from l2lda_jax.attacks.projection import project_linf

LogitsFn = Callable[[jax.Array], jax.Array]
# logits -> per-example loss that the attack maximises (labels and targets closed over)
Objective = Callable[[jax.Array], jax.Array]

NORMS = ('Linf', 'L2')
APGD_LOSSES = ('ce', 'dlr')
ALPHA = 0.75       # momentum (the paper's alpha)
DLR_FLOOR = 1e-12  # added to the DLR denominators, as in the reference codes
L2_FLOOR = 1e-12   # added to L2 norms before dividing, as in the reference codes


class APGDResult(NamedTuple):
  x_adv: jax.Array    # per example: first misclassified iterate found, else the best-loss point
  success: jax.Array  # bool: x_adv misclassified (x itself, already misclassified, included)
  loss: jax.Array     # the loss at the best-loss point of the run kept (-inf: not attacked)


# ----------------------------------------------------------------------------- schedule
def checkpoints(n_iter: int) -> np.ndarray:
  """The iterations w_1 < w_2 < ... <= n_iter after which the step size is checked.

  The reference codes' integer schedule (module docstring): windows of
  max(int(0.22 n), 1), shrinking by max(int(0.03 n), 1), at least max(int(0.06 n), 1).
  n_iter = 100 gives [22, 41, 57, 70, 80, 87, 93, 99].
  """
  if n_iter < 1:
    raise ValueError(f'apgd: n_iter must be >= 1, got {n_iter}')
  length = max(int(0.22 * n_iter), 1)
  shrink = max(int(0.03 * n_iter), 1)
  shortest = max(int(0.06 * n_iter), 1)
  w, out = 0, []
  while w + length <= n_iter:
    w += length
    out.append(w)
    length = max(length - shrink, shortest)
  return np.array(out, np.int32)


def window_lengths(n_iter: int) -> np.ndarray:
  """[n_iter + 1] int32: w_j - w_{j-1} at each checkpoint w_j, 0 at other iterations."""
  w = checkpoints(n_iter)
  table = np.zeros(n_iter + 1, np.int32)
  table[w] = np.diff(np.concatenate([[0], w]))
  return table


# ----------------------------------------------------------------------------- losses
def dlr_loss(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Difference of Logits Ratio (section 4, Eq. 6), maximised by the attacker:

    DLR(z, y) = -(z_y - max_{i != y} z_i) / (z_pi1 - z_pi3 + 1e-12),

  with z_pi1 >= z_pi2 >= ... the sorted logits. Invariant to shifting and rescaling
  the logits; positive once the example is misclassified. Needs >= 3 classes.
  """
  if logits.shape[-1] < 3:
    raise ValueError(f'dlr_loss needs at least 3 classes, got {logits.shape[-1]}')
  label_logit, other_best = _label_and_best_other(logits, labels)
  top, _ = jax.lax.top_k(logits, 3)
  return -(label_logit - other_best) / (top[..., 0] - top[..., 2] + DLR_FLOOR)


def dlr_targeted_loss(logits: jax.Array, labels: jax.Array, targets: jax.Array) -> jax.Array:
  """Targeted DLR (section 4, Eq. 7), maximised by the attacker:

    -(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2 + 1e-12).

  Positive once the target t beats the true class y. Needs >= 4 classes.
  """
  if logits.shape[-1] < 4:
    raise ValueError(f'dlr_targeted_loss needs at least 4 classes, got {logits.shape[-1]}')
  pick = lambda c: jnp.take_along_axis(logits, c[..., None], axis=-1)[..., 0]
  top, _ = jax.lax.top_k(logits, 4)
  return -(pick(labels) - pick(targets)) / (
      top[..., 0] - 0.5 * (top[..., 2] + top[..., 3]) + DLR_FLOOR)


def _untargeted_objective(loss: str, y: jax.Array) -> Objective:
  if loss == 'ce':
    return lambda logits: cross_entropy(logits, y)
  if loss == 'dlr':
    return lambda logits: dlr_loss(logits, y)
  raise ValueError(f'apgd: unknown loss {loss!r} (one of {APGD_LOSSES})')


# ----------------------------------------------------------------------------- geometry
def _per_example(v: jax.Array, like: jax.Array) -> jax.Array:
  """[n] -> [n, 1, ..., 1], to broadcast against `like`."""
  return v.reshape(v.shape + (1,) * (like.ndim - 1))


def _l2_norm(v: jax.Array) -> jax.Array:
  """[n, 1, ..., 1] L2 norm of each example."""
  return jnp.sqrt(jnp.sum(v * v, axis=tuple(range(1, v.ndim)), keepdims=True))


def project_l2(x_adv: jax.Array, x: jax.Array, eps: float) -> jax.Array:
  """Onto the L2 eps-ball around x, then into [0, 1] (the reference codes' projection).

  Radial scaling then clipping: not the exact projection onto the intersection, but
  clipping a point of the ball (x in [0, 1]) never moves it away from x, so the
  result is in both sets.
  """
  delta = x_adv - x
  scale = jnp.minimum(1.0, eps / (_l2_norm(delta) + L2_FLOOR))
  return jnp.clip(x + delta * scale, 0.0, 1.0)


def _project(norm: str, x_adv: jax.Array, x: jax.Array, eps: float) -> jax.Array:
  return project_linf(x_adv, x, eps) if norm == 'Linf' else project_l2(x_adv, x, eps)


def apgd_start(key: jax.Array, x: jax.Array, eps: float, norm: str) -> jax.Array:
  """The random start of the reference codes, clipped to [0, 1].

  Linf: uniform noise in [-1, 1] rescaled so that its largest entry is eps (a point
  on the ball's boundary); L2: Gaussian noise rescaled to L2 norm eps.
  """
  if norm == 'Linf':
    t = jax.random.uniform(key, x.shape, x.dtype, -1.0, 1.0)
    peak = jnp.max(jnp.abs(t), axis=tuple(range(1, x.ndim)), keepdims=True)
    return jnp.clip(x + eps * t / peak, 0.0, 1.0)
  t = jax.random.normal(key, x.shape, x.dtype)
  return jnp.clip(x + eps * t / (_l2_norm(t) + L2_FLOOR), 0.0, 1.0)


def _momentum_step(norm: str, x: jax.Array, eps: float, x_cur, x_prev, grad, eta, a):
  """x_{k+1} = P(x_k + a (z - x_k) + (1 - a)(x_k - x_{k-1})), z = P(x_k + eta s(grad))."""
  eta = _per_example(eta, x)
  if norm == 'Linf':
    direction = jnp.sign(grad)
  else:
    direction = grad / (_l2_norm(grad) + L2_FLOOR)
  z = _project(norm, x_cur + eta * direction, x, eps)
  return _project(norm, x_cur + a * (z - x_cur) + (1.0 - a) * (x_cur - x_prev), x, eps)


# ----------------------------------------------------------------------------- one run
class _RunState(NamedTuple):
  i: jax.Array            # iterations done
  x_cur: jax.Array        # x_k
  x_prev: jax.Array       # x_{k-1}
  grad: jax.Array         # gradient of the loss at x_cur
  loss: jax.Array         # f(x_k), [n]
  eta: jax.Array          # step size, [n]
  x_max: jax.Array        # highest-loss point so far, its loss and gradient
  loss_max: jax.Array
  grad_max: jax.Array
  x_fooled: jax.Array     # first misclassified iterate (meaningful where fooled)
  fooled: jax.Array       # bool [n]
  increases: jax.Array    # int32 [n]: steps that raised the loss since the last checkpoint
  loss_max_check: jax.Array  # f_max at the last checkpoint
  halved_check: jax.Array    # bool [n]: step size halved at the last checkpoint


def apgd_single_run(objective: Objective, logits_fn: LogitsFn, x: jax.Array, y: jax.Array,
                    key: jax.Array, active: jax.Array, *, eps: float, norm: str = 'Linf',
                    n_iter: int = 100, rho: float = 0.75) -> Best:
  """One run of Algorithm 1 from one random start -> Best(point, f_max, fooled).

  `objective(logits)` is the per-example loss to maximise; `y` the true labels,
  against which misclassification is judged. The run stops early once every
  `active` example is misclassified (the others' results are then unfinished and
  must be ignored by the caller). n_iter iterations, n_iter + 1 gradients at most.
  """
  windows = jnp.asarray(window_lengths(n_iter))

  def total(v):
    logits = logits_fn(v)
    values = objective(logits)
    return jnp.sum(values), (values, logits)

  value_and_grad = jax.value_and_grad(total, has_aux=True)

  def evaluate(v):
    (_, (values, logits)), grad = value_and_grad(v)
    return values, jnp.argmax(logits, -1) != y, grad

  x0 = apgd_start(key, x, eps, norm)
  loss0, wrong0, grad0 = evaluate(x0)
  n = x.shape[0]
  state = _RunState(
      i=jnp.int32(0), x_cur=x0, x_prev=x0, grad=grad0, loss=loss0,
      eta=jnp.full((n,), 2.0 * eps, x.dtype), x_max=x0, loss_max=loss0, grad_max=grad0,
      x_fooled=x0, fooled=wrong0, increases=jnp.zeros((n,), jnp.int32),
      loss_max_check=loss0, halved_check=jnp.zeros((n,), bool))

  def cond(s: _RunState):
    return (s.i < n_iter) & jnp.any(active & ~s.fooled)

  def body(s: _RunState):
    a = jnp.where(s.i == 0, 1.0, ALPHA).astype(x.dtype)
    x_new = _momentum_step(norm, x, eps, s.x_cur, s.x_prev, s.grad, s.eta, a)
    loss_new, wrong, grad_new = evaluate(x_new)
    ex = lambda m: _per_example(m, x)

    newly = wrong & ~s.fooled
    x_fooled = jnp.where(ex(newly), x_new, s.x_fooled)
    increases = s.increases + (loss_new > s.loss).astype(jnp.int32)
    better = loss_new > s.loss_max
    x_max = jnp.where(ex(better), x_new, s.x_max)
    grad_max = jnp.where(ex(better), grad_new, s.grad_max)
    loss_max = jnp.where(better, loss_new, s.loss_max)

    # Checkpoint w_j = i + 1: conditions 1 and 2 of Algorithm 1.
    window = windows[s.i + 1]
    at_check = window > 0
    too_few = increases.astype(jnp.float32) < rho * window.astype(jnp.float32)
    stalled = ~s.halved_check & (loss_max <= s.loss_max_check)
    halve = at_check & (too_few | stalled)
    return _RunState(
        i=s.i + 1,
        x_cur=jnp.where(ex(halve), x_max, x_new),
        x_prev=s.x_cur,
        grad=jnp.where(ex(halve), grad_max, grad_new),
        loss=jnp.where(halve, loss_max, loss_new),
        eta=jnp.where(halve, 0.5 * s.eta, s.eta),
        x_max=x_max, loss_max=loss_max, grad_max=grad_max,
        x_fooled=x_fooled, fooled=s.fooled | wrong,
        increases=jnp.where(at_check, 0, increases),
        loss_max_check=jnp.where(at_check, loss_max, s.loss_max_check),
        halved_check=jnp.where(at_check, halve, s.halved_check))

  s = jax.lax.while_loop(cond, body, state)
  point = jnp.where(_per_example(s.fooled, x), s.x_fooled, s.x_max)
  return Best(point, s.loss_max.astype(jnp.float32), s.fooled)


def _check(norm: str, n_restarts: int):
  if norm not in NORMS:
    raise ValueError(f'apgd: unknown norm {norm!r} (one of {NORMS})')
  if n_restarts < 1:
    raise ValueError(f'apgd: n_restarts must be >= 1, got {n_restarts}')


def _clean_record(logits_fn: LogitsFn, x: jax.Array, y: jax.Array):
  """(clean logits, the record before any run): x itself, fooled where misclassified."""
  logits = logits_fn(x)
  n = x.shape[0]
  return logits, Best(x, jnp.full((n,), -jnp.inf, jnp.float32), jnp.argmax(logits, -1) != y)


def _run_if_any_robust(best: Best, run: Callable[[jax.Array], Best]) -> Best:
  """keep_better(best, run(still robust)), skipped when every example is fooled."""
  robust = ~best.fooled
  return jax.lax.cond(jnp.any(robust),
                      lambda b: keep_better(b, *run(robust)), lambda b: b, best)


def _result(best: Best) -> APGDResult:
  return APGDResult(jax.lax.stop_gradient(best.x), best.fooled, best.score)


# ----------------------------------------------------------------------------- attacks
def apgd_run(logits_fn: LogitsFn, x: jax.Array, y: jax.Array, key: jax.Array, *,
             eps: float, norm: str = 'Linf', n_iter: int = 100, loss: str = 'ce',
             n_restarts: int = 1, rho: float = 0.75) -> APGDResult:
  """APGD (Croce and Hein 2020, Algorithm 1) -> APGDResult; see the module docstring.

  x: images in [0, 1] (batch first, e.g. NHWC); y: int labels. `norm` 'Linf' or 'L2';
  `loss` 'ce' (APGD-CE) or 'dlr' (APGD-DLR); n_iter (static) iterations per run;
  `n_restarts` random starts (restart 0 with `key`, restart r with fold_in(key, r)),
  each on the examples still robust. AutoAttack's standard version: APGD-CE with
  n_iter = 100, one restart.
  """
  _check(norm, n_restarts)
  objective = _untargeted_objective(loss, y)
  _, best = _clean_record(logits_fn, x, y)
  keys = restart_keys(key, n_restarts)

  def restart(r, best):
    return _run_if_any_robust(best, lambda active: apgd_single_run(
        objective, logits_fn, x, y, keys[r], active, eps=eps, norm=norm, n_iter=n_iter,
        rho=rho))

  return _result(jax.lax.fori_loop(0, n_restarts, restart, best))


def apgd(logits_fn: LogitsFn, x: jax.Array, y: jax.Array, key: jax.Array, *,
         eps: float, norm: str = 'Linf', n_iter: int = 100, loss: str = 'ce',
         n_restarts: int = 1, rho: float = 0.75) -> jax.Array:
  """APGD (Croce and Hein 2020) -> x_adv, inside the threat model; see `apgd_run`."""
  return apgd_run(logits_fn, x, y, key, eps=eps, norm=norm, n_iter=n_iter, loss=loss,
                  n_restarts=n_restarts, rho=rho).x_adv


def apgd_targeted_run(logits_fn: LogitsFn, x: jax.Array, y: jax.Array, key: jax.Array, *,
                      eps: float, norm: str = 'Linf', n_iter: int = 100,
                      n_target_classes: int = 9, n_restarts: int = 1,
                      rho: float = 0.75) -> APGDResult:
  """APGD-T (Croce and Hein 2020, section 4): APGD on the targeted DLR loss, one run per
  target class -> APGDResult.

  The targets of an example are the classes with the 2nd, 3rd, ..., (k+1)-th largest
  clean logit (k = n_target_classes, static; AutoAttack's standard version uses 9
  targets, 100 iterations, one restart). Each run attacks only the examples still
  robust; success is judged against the true label y, not the target. Run j (restart
  r) starts from fold_in(key, j n_restarts + r), run 0 from `key` itself.
  """
  _check(norm, n_restarts)
  clean_logits, best = _clean_record(logits_fn, x, y)
  classes = clean_logits.shape[-1]
  if not 1 <= n_target_classes <= classes - 1:
    raise ValueError(f'apgd_targeted: n_target_classes must be in [1, {classes - 1}], '
                     f'got {n_target_classes}')
  _, ranked = jax.lax.top_k(clean_logits, n_target_classes + 1)  # descending clean logits
  keys = restart_keys(key, n_target_classes * n_restarts)

  def run(r, best):
    targets = jax.lax.dynamic_index_in_dim(ranked, 1 + r // n_restarts, axis=1,
                                           keepdims=False)
    objective = lambda logits: dlr_targeted_loss(logits, y, targets)
    return _run_if_any_robust(best, lambda active: apgd_single_run(
        objective, logits_fn, x, y, keys[r], active, eps=eps, norm=norm, n_iter=n_iter,
        rho=rho))

  return _result(jax.lax.fori_loop(0, n_target_classes * n_restarts, run, best))


def apgd_targeted(logits_fn: LogitsFn, x: jax.Array, y: jax.Array, key: jax.Array, *,
                  eps: float, norm: str = 'Linf', n_iter: int = 100,
                  n_target_classes: int = 9, n_restarts: int = 1,
                  rho: float = 0.75) -> jax.Array:
  """APGD-T (Croce and Hein 2020) -> x_adv, inside the threat model; see
  `apgd_targeted_run`."""
  return apgd_targeted_run(logits_fn, x, y, key, eps=eps, norm=norm, n_iter=n_iter,
                           n_target_classes=n_target_classes, n_restarts=n_restarts,
                           rho=rho).x_adv
