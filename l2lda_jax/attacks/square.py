"""Square attack in Linf: score-based random search on the logits, no gradients.

Andriushchenko, Croce, Flammarion and Hein, "Square Attack: a query-efficient
black-box adversarial attack via random search", ECCV 2020, Algorithm 1 with the
Linf proposal of their Algorithm 2, as run by AutoAttack's standard version
(p_init = 0.8, 5,000 queries, one restart). It needs only the model's outputs, so
it finds adversarial examples that gradient attacks miss when a defense masks its
gradients: a model robust to PGD but not to Square is a warning sign.

Per example, starting from vertical stripes of +-eps:
  1. draw a square of side s (from the p schedule) at a random location;
  2. give it a new value of +-eps per channel, redrawn while it would leave the
     current point unchanged;
  3. query the model once; keep the candidate only if the margin
     Z_y - max_{j != y} Z_j went down.
An example stops as soon as its margin is negative (it is misclassified).

The whole batch takes one forward pass per iteration inside a `lax.while_loop`;
examples already broken keep their point and are not counted as queried. The
loop ends when the budget is spent or no example is left to attack.

Where this differs from the reference codes (the authors' `square_attack_linf` and
AutoAttack's `square.py`):
  * square corners range over every position, {0, ..., H - s}, as the paper's
    Algorithm 2 says; both codes draw `randint(0, h - s)`, which never reaches the
    last row and column (`reference_corners=True` restores that);
  * each example draws its own square and values, as in the authors' code;
    AutoAttack draws one square and one set of values for the whole batch;
  * an example stops at margin < 0 (the codes: <= 0), which matters only at exact
    logit ties, where the argmax may still pick the true class;
  * redraws of an unchanged square are capped at MAX_VALUE_DRAWS;
  * the budget counts the stripe start as query 1, then at most n_queries - 1
    squares, as the authors' code; AutoAttack's loop tries n_queries squares after
    the start, n_queries + 1 queries in all.
"""

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from l2lda_jax.attacks.losses import _label_and_best_other
from l2lda_jax.attacks.projection import project_linf

LogitsFn = Callable[[jax.Array], jax.Array]

# The schedule is written for 10,000 iterations; other budgets are rescaled onto it.
SCHEDULE_LENGTH = 10000
# (iteration on the 10,000 scale, divisor of p_init from just after it): the
# published halvings at 10, 50, 200, 500, 1000, 2000, 4000, 6000 and 8000.
P_HALVINGS = ((10, 2), (50, 4), (200, 8), (500, 16), (1000, 32), (2000, 64), (4000, 128),
              (6000, 256), (8000, 512))
# Cap on redraws of a square's values (the reference redraws without a cap). Each draw
# leaves the point unchanged with probability at most 1/2 when eps > 0, so in practice
# the cap is reached only with eps = 0, where every proposal is a no-op.
MAX_VALUE_DRAWS = 64


class SquareResult(NamedTuple):
  x_adv: jax.Array    # the best point found per example
  margin: jax.Array   # its margin Z_y - max_{j != y} Z_j (negative: misclassified)
  queries: jax.Array  # int32 model queries per example, the stripe start included


# ----------------------------------------------------------------------------- schedule
def p_selection(p_init: float, iteration: int, n_iters: int) -> float:
  """The fraction of pixels p a square covers at `iteration` (the authors' `p_selection`).

  The iteration is first rescaled to a 10,000-iteration run, int(it / n_iters * 10000),
  exactly as the reference computes it, so short budgets shrink their squares sooner.
  """
  scaled = int(iteration / n_iters * SCHEDULE_LENGTH)
  divisor = 1
  for threshold, halved in P_HALVINGS:
    if scaled > threshold:
      divisor = halved
  return p_init / divisor


def square_side(p: float, height: int, width: int) -> int:
  """Side of the square covering a fraction p of the image: round(sqrt(p H W)) in [1, H-1].

  Capped one below the image side so that a location can still be drawn (the
  reference's `min(max(s, 1), h-1)`).
  """
  side = int(round(np.sqrt(p * height * width)))
  return min(max(side, 1), min(height, width) - 1)


def square_sides(n_queries: int, p_init: float, height: int, width: int) -> np.ndarray:
  """The side at each of the n_queries - 1 iterations after the stripe start (int32).

  Made in Python at trace time, so the loop indexes a constant table and the
  float arithmetic of the schedule is the reference's own.
  """
  return np.array([square_side(p_selection(p_init, i, n_queries), height, width)
                   for i in range(max(n_queries - 1, 1))], np.int32)


# ----------------------------------------------------------------------------- pieces
def margin_loss(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Z_y - max_{j != y} Z_j per example, not clipped at zero: negative once misclassified.

  The attack minimises it; unlike `losses.margin` it keeps decreasing below zero,
  which is what the acceptance test compares.
  """
  label_logit, other_best = _label_and_best_other(logits, labels)
  return label_logit - other_best


def stripe_init(key: jax.Array, x: jax.Array, eps: float) -> jax.Array:
  """Vertical stripes: each column of width 1 gets +-eps, one sign per channel (NHWC).

  The starting point of Algorithm 1 for Linf; clipped to [0, 1].
  """
  n, _, width, channels = x.shape
  plus = jax.random.bernoulli(key, 0.5, (n, 1, width, channels))
  return jnp.where(plus, project_linf(x + eps, x, eps), project_linf(x - eps, x, eps))


def square_masks(key: jax.Array, side: jax.Array, n: int, height: int, width: int,
                 reference_corners: bool = False) -> jax.Array:
  """One random square of the given side per example, as a bool [n, H, W, 1] mask.

  The corner is uniform over {0, ..., H - side} x {0, ..., W - side}, every square
  inside the image, as in the paper's Algorithm 2. `reference_corners=True` draws
  it as both reference codes do, `randint(0, h - s)` with the end excluded: then no
  square ever reaches the last row or column, which keep their stripe values.
  Built from iota comparisons, so `side` may be traced.
  """
  row_key, col_key = jax.random.split(key)
  end = 0 if reference_corners else 1
  top = jax.random.randint(row_key, (n, 1), 0, height - side + end)
  left = jax.random.randint(col_key, (n, 1), 0, width - side + end)
  rows = jnp.arange(height)[None, :]
  cols = jnp.arange(width)[None, :]
  in_rows = (rows >= top) & (rows < top + side)
  in_cols = (cols >= left) & (cols < left + side)
  return (in_rows[:, :, None] & in_cols[:, None, :])[..., None]


def _window_reproduces(mask: jax.Array, candidate: jax.Array, x_best: jax.Array) -> jax.Array:
  """[n, C]: whether `candidate` equals x_best on every pixel of the square, per channel."""
  return jnp.all(jnp.where(mask, candidate == x_best, True), axis=(1, 2))


def draw_window_signs(key: jax.Array, keeps_plus: jax.Array, keeps_minus: jax.Array,
                      redraw: jax.Array) -> jax.Array:
  """A +eps (True) / -eps (False) choice per example and channel for the new square.

  `keeps_plus[n, c]` / `keeps_minus[n, c]`: whether +eps / -eps in channel c leaves the
  square as it is. A draw that leaves all channels unchanged would waste a query, so,
  like the reference's `while` loop, it is drawn again (for the rows in `redraw`),
  at most MAX_VALUE_DRAWS times.
  """
  def unchanged(plus):
    return redraw & jnp.all(jnp.where(plus, keeps_plus, keeps_minus), axis=-1)

  def body(state):
    draws, plus, key = state
    key, sub = jax.random.split(key)
    fresh = jax.random.bernoulli(sub, 0.5, plus.shape)
    return draws + 1, jnp.where(unchanged(plus)[:, None], fresh, plus), key

  def cond(state):
    draws, plus, _ = state
    return (draws < MAX_VALUE_DRAWS) & jnp.any(unchanged(plus))

  first_key, key = jax.random.split(key)
  plus = jax.random.bernoulli(first_key, 0.5, keeps_plus.shape)
  _, plus, _ = jax.lax.while_loop(cond, body, (jnp.int32(1), plus, key))
  return plus


# ----------------------------------------------------------------------------- attack
def square_linf_run(logits_fn: LogitsFn, x: jax.Array, y: jax.Array, key: jax.Array, *,
                    eps: float, n_queries: int = 5000, p_init: float = 0.8,
                    reference_corners: bool = False) -> SquareResult:
  """Square attack (Linf), Algorithm 1 of Andriushchenko et al. (ECCV 2020); see the module
  docstring. Returns the points, their margins and the queries per example.

  x: NHWC images in [0, 1] (H, W >= 2); y: int labels; `n_queries` (static) is the
  budget per example, the stripe start counting as the first query, so at most
  n_queries - 1 squares are tried. As in AutoAttack, an example the model already
  misclassifies at x is returned as x itself with 0 queries (that clean forward pass
  is the usual accuracy check, outside the budget, as in both reference codes).
  `reference_corners`: see `square_masks` (False, the default, follows the paper).
  """
  if n_queries < 1:
    raise ValueError(f'square attack: n_queries must be >= 1, got {n_queries}')
  n, height, width, _ = x.shape
  sides = jnp.asarray(square_sides(n_queries, p_init, height, width))
  plus_x = project_linf(x + eps, x, eps)   # every pixel of a proposal is one of these two
  minus_x = project_linf(x - eps, x, eps)
  init_key, search_key = jax.random.split(key)

  attacked = jnp.argmax(logits_fn(x), -1) == y
  stripes = stripe_init(init_key, x, eps)
  x_best = jnp.where(attacked[:, None, None, None], stripes, x)
  best_margin = margin_loss(logits_fn(x_best), y)
  queries = attacked.astype(jnp.int32)

  def active(best_margin):
    return attacked & (best_margin >= 0)

  def cond(state):
    it, _, best_margin, _ = state
    return (it < n_queries - 1) & jnp.any(active(best_margin))

  def body(state):
    it, x_best, best_margin, queries = state
    live = active(best_margin)
    step_key = jax.random.fold_in(search_key, it)
    mask_key, sign_key = jax.random.split(step_key)
    mask = square_masks(mask_key, sides[it], n, height, width, reference_corners)
    plus = draw_window_signs(sign_key, _window_reproduces(mask, plus_x, x_best),
                             _window_reproduces(mask, minus_x, x_best), live)
    square = jnp.where(plus[:, None, None, :], plus_x, minus_x)
    x_new = jnp.where(mask, square, x_best)
    new_margin = margin_loss(logits_fn(x_new), y)
    # Accept only a strict decrease, and only for examples still being attacked.
    better = live & (new_margin < best_margin)
    x_best = jnp.where(better[:, None, None, None], x_new, x_best)
    best_margin = jnp.where(better, new_margin, best_margin)
    return it + 1, x_best, best_margin, queries + live.astype(jnp.int32)

  _, x_best, best_margin, queries = jax.lax.while_loop(
      cond, body, (jnp.int32(0), x_best, best_margin, queries))
  return SquareResult(jax.lax.stop_gradient(x_best), best_margin, queries)


def square_linf(logits_fn: LogitsFn, x: jax.Array, y: jax.Array, key: jax.Array, *,
                eps: float, n_queries: int = 5000, p_init: float = 0.8,
                reference_corners: bool = False) -> jax.Array:
  """Square attack (Linf, Andriushchenko et al. 2020, Algorithm 1) -> x_adv; see
  `square_linf_run`. The defaults are AutoAttack's standard version."""
  return square_linf_run(logits_fn, x, y, key, eps=eps, n_queries=n_queries, p_init=p_init,
                         reference_corners=reference_corners).x_adv
