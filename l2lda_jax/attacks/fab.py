"""FAB-T: the targeted Fast Adaptive Boundary attack, in Linf.

Croce and Hein, "Minimally distorted adversarial examples with a fast adaptive
boundary attack", ICML 2020 (Algorithm 1), in its targeted version FAB-T, the third
attack of AutoAttack's standard sequence (Croce and Hein, ICML 2020b, section 5).

FAB looks for the adversarial example of smallest Linf distance to x, not for the
highest loss inside a ball. For a true class y and a target class t, let
f(z) = Z_t(z) - Z_y(z) (negative while z is still classified as y against t). At the
iterate x_k, f is linearised, and the decision boundary replaced by the hyperplane

  pi_k = {z : f(x_k) + <grad f(x_k), z - x_k> = 0}.

Both the iterate and the original point are projected onto pi_k intersected with the
pixel box [0, 1] (`project_linf_hyperplane`, the minimal-Linf move that reaches the
hyperplane without leaving the box), giving the moves d_1 (from x_k) and d_2 (from x),
and the next iterate is their biased, overshot combination

  x_{k+1} = clip((1 - a)(x_k + eta d_1) + a (x + eta d_2), 0, 1),
  a = min(|d_1|_inf / (|d_1|_inf + |d_2|_inf), alpha_max),

which leans towards x when the boundary is about as close to x as to x_k. Once x_{k+1}
is misclassified (argmax != y, judged against the TRUE label as robust accuracy is),
it is recorded if it is the closest adversarial so far, and the iterate takes the
backward step x_{k+1} <- x + beta (x_{k+1} - x) to look for a closer one. There is no
early stop: FAB keeps shrinking the distance for all n_iter iterations.

FAB-T (AutoAttack's standard settings, Linf): targets the classes with the 2nd, ...,
10th largest clean logit in turn (n_target_classes = 9), n_iter = 100, one restart
from x itself, alpha_max = 0.1, eta = 1.05, beta = 0.9. A run attacks only the
examples still robust, i.e. correctly classified at x with no adversarial found yet
within eps; an example counts as broken only if its closest adversarial is within
eps (Linf) of x, and then it is not attacked by later targets. Restart r >= 1 of a
target starts from a random point at Linf distance eps / 2 from x, clipped to [0, 1]
(as the reference). An example the model already misclassifies at x is returned as x,
not attacked.

Where this differs from the reference codes (AutoAttack's `fab_pt.py`/`fab_base.py`,
torchattacks' `FAB` with `multi_targeted=True`):
  * each example carries the closest adversarial found over all the targets it was
    attacked with (the codes keep a run's result only when it is within eps); this
    changes `norm` and `x_min` for unbroken examples only, never `x_adv` or `success`;
  * the hyperplane enters the projection as its residual at the projected point,
    f(x_k) (for x_k) and f(x_k) + <grad, x - x_k> (for x), rather than through the
    offset b = <grad, x_k> - f(x_k), which the codes subtract again; the same
    numbers up to float rounding;
  * the projection bisects on the move's size lam, not on the index of the sorted
    breakpoints, then solves the linear piece it lands on; the same answer to within
    1e-9 in lam, without the sort;
  * the backward-stepped iterate is clipped to [0, 1] (a convex combination of points
    in the box, so this only removes float rounding);
  * the random starts of restarts r >= 1 are this library's draws, and every run
    computes the whole batch (the results of examples not attacked are discarded).
"""

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

from l2lda_jax.attacks.gradient import restart_keys

LogitsFn = Callable[[jax.Array], jax.Array]

NORM_FLOOR = 1e-8      # floor on |d_1|_inf, |d_2|_inf in a = d_1 / (d_1 + d_2), as the codes
SLOPE_FLOOR = 1e-30    # floor on the projection's slope (a sum of |w_i|; 0 only where w = 0)
BISECTIONS = 30        # halvings of the projection's bracket on lam (in [0, 1]): width 1e-9


class FABResult(NamedTuple):
  x_adv: jax.Array    # inside the threat model: the closest adversarial where within eps, else x
  success: jax.Array  # bool: x_adv misclassified (x itself, already misclassified, included)
  norm: jax.Array     # Linf distance of the closest adversarial found, float32: 0 for examples
                      # misclassified at x, inf where none was found; > eps: not broken
  x_min: jax.Array    # the closest adversarial found (x where none), possibly beyond eps


# ----------------------------------------------------------------------------- projection
def _flat(v: jax.Array) -> jax.Array:
  return v.reshape(v.shape[0], -1)


def _per_example(v: jax.Array, like: jax.Array) -> jax.Array:
  """[n] -> [n, 1, ..., 1], to broadcast against `like`."""
  return v.reshape(v.shape + (1,) * (like.ndim - 1))


def _linf(v: jax.Array) -> jax.Array:
  """[n]: Linf norm of each example."""
  return jnp.max(jnp.abs(_flat(v)), axis=-1)


def _project_residual(t: jax.Array, w: jax.Array, residual: jax.Array) -> jax.Array:
  """The move d of `project_linf_hyperplane`, the hyperplane given by w and the residual
  <w, t> - b of the point t: t [n, D], w [n, D], residual [n] -> d [n, D]."""
  # Orient the hyperplane so that <w, t + d> has to go DOWN by need = |residual|.
  side = jnp.where(residual >= 0, 1.0, -1.0).astype(t.dtype)
  need = side * residual
  direction = -side[:, None] * jnp.sign(w)          # per coordinate: +1 up, -1 down, 0 idle
  room = jnp.where(direction > 0, 1.0 - t, jnp.where(direction < 0, t, 0.0))
  room = jnp.maximum(room, 0.0)                     # how far the box lets each coordinate go
  weight = jnp.abs(w) * (direction != 0)
  # A move of Linf size lam lowers <w, .> by at most h(lam) = sum_i |w_i| min(lam, room_i)
  # (concave, piecewise linear, nondecreasing), so the projection's size is the smallest
  # lam with h(lam) = need. Bisection on lam narrows it to a bracket [lo, hi] of width
  # 2^-BISECTIONS (sorting the breakpoints, as the codes do, took 7-18x longer under XLA
  # on CPU), where h(lam) = E + lam S, E = sum over room_i <= lo of |w_i| room_i and
  # S = sum over room_i > lo of |w_i|, which gives lam exactly unless a breakpoint falls
  # inside the bracket (then lam is off by less than its width).
  h = lambda lam: jnp.sum(weight * jnp.minimum(lam[:, None], room), axis=-1)
  widest = jnp.max(room, axis=-1)

  def halve(_, bracket):
    lo, hi = bracket
    mid = 0.5 * (lo + hi)
    short = h(mid) < need
    return jnp.where(short, mid, lo), jnp.where(short, hi, mid)

  lo, _ = jax.lax.fori_loop(0, BISECTIONS, halve, (jnp.zeros_like(widest), widest))
  above = room > lo[:, None]
  e = jnp.sum(jnp.where(above, 0.0, weight * room), axis=-1)
  s = jnp.sum(jnp.where(above, weight, 0.0), axis=-1)
  lam = jnp.maximum((need - e) / jnp.maximum(s, SLOPE_FLOOR), 0.0)
  # Even the farthest corner of the box falls short: go to that corner (the box point
  # closest to the hyperplane), as the reference does.
  reachable = h(widest) >= need
  step = jnp.where(reachable[:, None], jnp.minimum(lam[:, None], room), room)
  return direction * step


def project_linf_hyperplane(points: jax.Array, w: jax.Array, b: jax.Array) -> jax.Array:
  """The minimal-Linf move d that puts each point on its hyperplane, inside the box:

    d = argmin ||d||_inf  s.t.  <w, t + d> = b,  0 <= t + d <= 1,

  for t = points [n, D], w [n, D], b [n] (the reference codes' `projection_linf`).
  Returns d [n, D]; points + d is the projection. Coordinates with w_i = 0 do not move.
  Where the hyperplane does not meet the box, d goes to the box corner closest to it
  (each coordinate as far as the box allows, in the direction that reduces the gap).
  The optimum is not unique in Linf; this is the one that moves every coordinate by
  min(lam, room_i), lam = ||d||_inf.
  """
  return _project_residual(points, w, jnp.sum(w * points, axis=-1) - b)


# ----------------------------------------------------------------------------- one run
class _RunState(NamedTuple):
  x_cur: jax.Array   # the iterate x_k
  x_min: jax.Array   # closest adversarial found in this run
  norm: jax.Array    # its Linf distance to x, [n] (inf: none yet)


def fab_start(key: jax.Array, x: jax.Array, eps: float) -> jax.Array:
  """The reference's random start for restarts r >= 1: uniform noise in [-1, 1]
  rescaled so that its largest entry is eps / 2, clipped to [0, 1]."""
  t = jax.random.uniform(key, x.shape, x.dtype, -1.0, 1.0)
  peak = jnp.max(jnp.abs(t), axis=tuple(range(1, x.ndim)), keepdims=True)
  return jnp.clip(x + 0.5 * eps * t / peak, 0.0, 1.0)


def fab_targeted_single_run(logits_fn: LogitsFn, x: jax.Array, y: jax.Array,
                            targets: jax.Array, x_start: jax.Array, *, n_iter: int = 100,
                            alpha_max: float = 0.1, eta: float = 1.05,
                            beta: float = 0.9) -> tuple[jax.Array, jax.Array]:
  """n_iter FAB steps towards the boundary between y and `targets`, from x_start
  -> (closest adversarial found, its Linf distance to x; inf where none)."""
  def total(v):
    logits = logits_fn(v)
    pick = lambda c: jnp.take_along_axis(logits, c[:, None], axis=-1)[:, 0]
    values = pick(targets) - pick(y)
    return jnp.sum(values), values

  value_and_grad = jax.value_and_grad(total, has_aux=True)
  x_flat = _flat(x)
  ex = lambda m: _per_example(m, x)

  def body(_, s: _RunState) -> _RunState:
    (_, f), grad = value_and_grad(s.x_cur)
    g = _flat(grad)
    cur = _flat(s.x_cur)
    # The linearised boundary through x_k, as residuals at x_k and at x.
    d_cur = _project_residual(cur, g, f)
    d_orig = _project_residual(x_flat, g, f + jnp.sum(g * (x_flat - cur), axis=-1))
    size_cur = jnp.maximum(jnp.max(jnp.abs(d_cur), -1), NORM_FLOOR)
    size_orig = jnp.maximum(jnp.max(jnp.abs(d_orig), -1), NORM_FLOOR)
    a = jnp.clip(size_cur / (size_cur + size_orig), 0.0, alpha_max)[:, None]
    x_new = jnp.clip((1.0 - a) * (cur + eta * d_cur) + a * (x_flat + eta * d_orig), 0.0, 1.0)
    x_new = x_new.reshape(x.shape)

    fooled = jnp.argmax(logits_fn(x_new), -1) != y
    dist = _linf(x_new - x)
    closer = fooled & (dist < s.norm)
    backward = jnp.clip(x + beta * (x_new - x), 0.0, 1.0)
    return _RunState(x_cur=jnp.where(ex(fooled), backward, x_new),
                     x_min=jnp.where(ex(closer), x_new, s.x_min),
                     norm=jnp.where(closer, dist, s.norm))

  n = x.shape[0]
  state = _RunState(x_start, x, jnp.full((n,), jnp.inf, x.dtype))
  state = jax.lax.fori_loop(0, n_iter, body, state)
  return state.x_min, state.norm.astype(jnp.float32)


# ----------------------------------------------------------------------------- attack
def fab_targeted_run(logits_fn: LogitsFn, x: jax.Array, y: jax.Array, key: jax.Array, *,
                     eps: float, n_iter: int = 100, n_target_classes: int = 9,
                     n_restarts: int = 1, alpha_max: float = 0.1, eta: float = 1.05,
                     beta: float = 0.9) -> FABResult:
  """FAB-T in Linf (Croce and Hein 2020) -> FABResult; see the module docstring.

  x: images in [0, 1] (batch first, e.g. NHWC); y: int labels. The targets of an
  example are the classes with the 2nd, ..., (k+1)-th largest clean logit
  (k = n_target_classes, static), attacked in turn, each on the examples still
  robust (no adversarial within eps yet); n_iter (static) steps per run. Restart 0 of
  each target starts from x; restart r >= 1 of target j from a random point drawn with
  fold_in(key, j n_restarts + r). AutoAttack's standard FAB-T: 9 targets, n_iter = 100,
  one restart (no randomness), alpha_max = 0.1, eta = 1.05, beta = 0.9.
  """
  if n_restarts < 1:
    raise ValueError(f'fab_targeted: n_restarts must be >= 1, got {n_restarts}')
  if n_iter < 1:
    raise ValueError(f'fab_targeted: n_iter must be >= 1, got {n_iter}')
  clean_logits = logits_fn(x)
  classes = clean_logits.shape[-1]
  if not 1 <= n_target_classes <= classes - 1:
    raise ValueError(f'fab_targeted: n_target_classes must be in [1, {classes - 1}], '
                     f'got {n_target_classes}')
  correct = jnp.argmax(clean_logits, -1) == y
  _, ranked = jax.lax.top_k(clean_logits, n_target_classes + 1)  # descending clean logits
  keys = restart_keys(key, n_target_classes * n_restarts)
  ex = lambda m: _per_example(m, x)

  def run(i, carry):
    x_min, norm = carry
    robust = correct & ~(norm <= eps)
    targets = jax.lax.dynamic_index_in_dim(ranked, 1 + i // n_restarts, axis=1,
                                           keepdims=False)

    def attack(carry):
      x_min, norm = carry
      if n_restarts == 1:
        x_start = x
      else:
        x_start = jax.lax.cond(i % n_restarts == 0, lambda: x,
                               lambda: fab_start(keys[i], x, eps))
      run_min, run_norm = fab_targeted_single_run(
          logits_fn, x, y, targets, x_start, n_iter=n_iter, alpha_max=alpha_max, eta=eta,
          beta=beta)
      closer = robust & (run_norm < norm)
      return jnp.where(ex(closer), run_min, x_min), jnp.where(closer, run_norm, norm)

    return jax.lax.cond(jnp.any(robust), attack, lambda c: c, carry)

  start = (x, jnp.where(correct, jnp.inf, 0.0).astype(jnp.float32))
  x_min, norm = jax.lax.fori_loop(0, n_target_classes * n_restarts, run, start)
  broken = correct & (norm <= eps)
  x_adv = jnp.where(ex(broken), x_min, x)
  return FABResult(jax.lax.stop_gradient(x_adv), broken | ~correct, norm,
                   jax.lax.stop_gradient(x_min))


def fab_targeted(logits_fn: LogitsFn, x: jax.Array, y: jax.Array, key: jax.Array, *,
                 eps: float, n_iter: int = 100, n_target_classes: int = 9,
                 n_restarts: int = 1, alpha_max: float = 0.1, eta: float = 1.05,
                 beta: float = 0.9) -> jax.Array:
  """FAB-T (Croce and Hein 2020) -> x_adv, inside the threat model: the closest
  adversarial found where it is within eps of x, else x itself; see `fab_targeted_run`."""
  return fab_targeted_run(logits_fn, x, y, key, eps=eps, n_iter=n_iter,
                          n_target_classes=n_target_classes, n_restarts=n_restarts,
                          alpha_max=alpha_max, eta=eta, beta=beta).x_adv
