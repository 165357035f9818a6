"""The Linf Square attack (Andriushchenko et al. 2020): threat model, budget, schedule,
monotone acceptance, and that it breaks an undefended model, on tiny shapes."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from l2lda_jax import attacks
from l2lda_jax.attack_specs import AttackNameError, AttackSpec, parse_attack
from l2lda_jax.attacks import square

HW = 10  # 10 x 10 images: p_init = 0.8 gives a side of round(sqrt(80)) = 9 = H - 1


def _linear_logits_fn(channels=1, seed=0, classes=10):
  w = jax.random.normal(jax.random.PRNGKey(seed), (HW * HW * channels, classes)) * 0.3
  return lambda x: x.reshape(x.shape[0], -1) @ w


def _saturated_images(n=6, channels=3, seed=1):
  """Uniform images where about a third of the pixels sit exactly at 0 or at 1."""
  x = jax.random.uniform(jax.random.PRNGKey(seed), (n, HW, HW, channels))
  return jnp.clip(x * 1.6 - 0.3, 0.0, 1.0)


def _run(logits_fn, x, y, key=jax.random.PRNGKey(3), **kwargs):
  return jax.jit(functools.partial(attacks.square_linf_run, logits_fn, **kwargs))(x, y, key)


# ----------------------------------------------------------------------------- threat model
def test_every_point_is_a_vertex_of_the_eps_ball_inside_the_pixel_box():
  eps = 0.2
  x = _saturated_images()
  assert float(jnp.mean((x == 0) | (x == 1))) > 0.2  # the box clip is exercised
  logits_fn = _linear_logits_fn(channels=3)
  y = jnp.argmax(logits_fn(x), -1)  # all correctly classified: all attacked
  result = _run(logits_fn, x, y, eps=eps, n_queries=40)
  x_adv = result.x_adv
  assert float(jnp.max(jnp.abs(x_adv - x))) <= eps + 1e-6
  assert float(x_adv.min()) >= 0.0 and float(x_adv.max()) <= 1.0
  # Stripes and squares only ever write clip(x + eps) or clip(x - eps) (Algorithm 2).
  vertex = (x_adv == jnp.clip(x + eps, 0, 1)) | (x_adv == jnp.clip(x - eps, 0, 1))
  assert bool(jnp.all(vertex))


def test_stripe_init_gives_each_column_one_sign_per_channel():
  x = jnp.full((4, HW, HW, 3), 0.5)
  delta = square.stripe_init(jax.random.PRNGKey(0), x, 0.1) - x
  np.testing.assert_allclose(jnp.abs(delta), 0.1, rtol=1e-5)
  assert bool(jnp.all(delta == delta[:, :1]))          # constant down every column
  assert 0 < float(jnp.mean(delta > 0)) < 1            # both signs occur
  assert bool(jnp.any(delta[:, :, :, 0] != delta[:, :, :, 1]))  # channels differ


def test_square_masks_are_squares_inside_the_image_and_reach_the_last_row():
  side = 3
  masks = square.square_masks(jax.random.PRNGKey(0), jnp.int32(side), 400, HW, HW)[..., 0]
  assert bool(jnp.all(jnp.sum(masks, axis=(1, 2)) == side * side))
  rows, cols = jnp.any(masks, axis=2), jnp.any(masks, axis=1)
  assert bool(jnp.all(jnp.sum(rows, -1) == side)) and bool(jnp.all(jnp.sum(cols, -1) == side))
  # The paper's corners {0, ..., H - s} reach the last row and column; the codes' do not.
  assert bool(jnp.any(masks[:, -1, :])) and bool(jnp.any(masks[:, :, -1]))
  reference = square.square_masks(jax.random.PRNGKey(0), jnp.int32(side), 400, HW, HW,
                                  reference_corners=True)[..., 0]
  assert not bool(jnp.any(reference[:, -1, :])) and not bool(jnp.any(reference[:, :, -1]))


def test_values_are_redrawn_until_the_square_changes():
  # One channel where +eps would leave the square as it is: every row asked to redraw
  # must end on -eps; rows not asked keep their first draw (both signs occur).
  n = 64
  keeps_plus = jnp.ones((n, 1), bool)
  keeps_minus = jnp.zeros((n, 1), bool)
  redraw = jnp.arange(n) < n // 2
  plus = square.draw_window_signs(jax.random.PRNGKey(0), keeps_plus, keeps_minus, redraw)
  assert not bool(jnp.any(plus[: n // 2]))
  assert bool(jnp.any(plus[n // 2:]))


# ----------------------------------------------------------------------------- budget
def _rowwise_logits_fn(bias, slope, mean_slope):
  """Two classes; row i scores class 0 as bias_i - slope_i * mean|x - 0.5| - mean_slope_i *
  mean(x), class 1 as 0. Per-row parameters give one batch examples of every kind."""
  bias, slope, mean_slope = map(jnp.asarray, (bias, slope, mean_slope))

  def logits_fn(x):
    distance = jnp.mean(jnp.abs(x - 0.5), axis=(1, 2, 3))
    score = bias - slope * distance - mean_slope * jnp.mean(x, axis=(1, 2, 3))
    return jnp.stack([score, jnp.zeros_like(score)], -1)

  return logits_fn


# Row 0: misclassified at x (label 1, class 0 wins). Row 1: correct at x, broken by any
# stripe start (every pixel moves by eps). Both margins could still go down with the
# mean of x, so a search that forgot they are done would move them. Rows 2, 3: never
# broken; row 2's margin is constant, so nothing is accepted; row 3's can still go down
# (raising the mean). Both search for the whole budget.
ROWS = _rowwise_logits_fn(bias=[1.0, 1.0, 1.0, 3.0], slope=[0.0, 10.0, 0.0, 0.0],
                          mean_slope=[1.0, 1.0, 0.0, 1.0])
ROW_LABELS = jnp.array([1, 0, 0, 0])
EPS = 0.1


def _rows_images():
  return jnp.full((4, HW, HW, 1), 0.5)


@pytest.mark.parametrize('n_queries', [1, 2, 37])
def test_queries_never_exceed_the_budget_and_match_the_forward_passes(n_queries):
  passes = []  # one entry per forward pass actually executed (not per trace)

  def counted(x):
    jax.debug.callback(lambda: passes.append(1))
    return ROWS(x)

  result = _run(counted, _rows_images(), ROW_LABELS, eps=EPS, n_queries=n_queries)
  jax.block_until_ready(result)
  jax.effects_barrier()
  queries = np.asarray(result.queries)
  assert queries.max() <= n_queries
  np.testing.assert_array_equal(queries, [0, 1, n_queries, n_queries])
  # The clean check and the stripe start, then one pass per iteration for the batch.
  assert len(passes) == 1 + queries.max()


def test_misclassified_and_stripe_broken_examples_are_never_moved_again():
  x, key = _rows_images(), jax.random.PRNGKey(5)
  result = _run(ROWS, x, ROW_LABELS, key=key, eps=EPS, n_queries=30)
  stripes = square.stripe_init(jax.random.split(key)[0], x, EPS)
  np.testing.assert_array_equal(result.x_adv[0], x[0])        # misclassified at x: x itself
  np.testing.assert_array_equal(result.x_adv[1], stripes[1])  # broken at the start
  assert float(result.margin[1]) < 0
  np.testing.assert_array_equal(result.x_adv[2], stripes[2])  # no candidate ever helps
  assert float(result.margin[3]) < float(square.margin_loss(ROWS(stripes), ROW_LABELS)[3])


# ----------------------------------------------------------------------------- acceptance
def test_returned_margin_is_never_above_the_stripe_start_and_is_the_true_margin():
  x = _saturated_images(n=8, channels=1, seed=4)
  logits_fn = _linear_logits_fn(channels=1, seed=2)
  y = jnp.argmax(logits_fn(x), -1)
  key = jax.random.PRNGKey(7)
  result = _run(logits_fn, x, y, key=key, eps=0.03, n_queries=60)
  start = square.margin_loss(logits_fn(square.stripe_init(jax.random.split(key)[0], x, 0.03)), y)
  np.testing.assert_allclose(result.margin, square.margin_loss(logits_fn(result.x_adv), y),
                             rtol=1e-5, atol=1e-6)
  assert bool(jnp.all(result.margin <= start))
  assert bool(jnp.any(result.margin < start))  # and the search did accept something


# ----------------------------------------------------------------------------- strength
def _fit_linear_classifier():
  """Softmax regression fit to 10 noisy prototypes (10 x 10 grey images)."""
  protos = 0.3 + 0.4 * jax.random.uniform(jax.random.PRNGKey(0), (10, HW, HW, 1))

  def sample(n, seed):
    y = jax.random.randint(jax.random.PRNGKey(100 + seed), (n,), 0, 10)
    noise = 0.05 * jax.random.normal(jax.random.PRNGKey(200 + seed), (n, HW, HW, 1))
    return jnp.clip(protos[y] + noise, 0, 1), y

  x, y = sample(512, 0)
  apply = lambda p, v: v.reshape(v.shape[0], -1) @ p['w'] + p['b']
  params = {'w': jnp.zeros((HW * HW, 10)), 'b': jnp.zeros(10)}
  optimizer = optax.adam(0.05)

  def step(carry, _):
    params, state = carry
    grads = jax.grad(lambda p: optax.softmax_cross_entropy_with_integer_labels(
        apply(p, x), y).mean())(params)
    updates, state = optimizer.update(grads, state)
    return (optax.apply_updates(params, updates), state), None

  (params, _), _ = jax.lax.scan(step, (params, optimizer.init(params)), None, length=200)
  return functools.partial(apply, params), sample(64, 1)


def test_square_breaks_an_undefended_model_with_300_queries():
  logits_fn, (x, y) = _fit_linear_classifier()
  clean = float(jnp.mean(jnp.argmax(logits_fn(x), -1) == y))
  result = _run(logits_fn, x, y, eps=0.1, n_queries=300)
  robust = float(jnp.mean(jnp.argmax(logits_fn(result.x_adv), -1) == y))
  assert clean >= 0.95
  assert robust <= 0.5 * clean
  # Broken examples stopped early: fewer queries on average than the budget.
  assert float(jnp.mean(result.queries)) < 300


# ----------------------------------------------------------------------------- schedule
@pytest.mark.parametrize('iteration, n_iters, p', [
    (0, 10000, 0.8), (10, 10000, 0.8), (11, 10000, 0.4), (50, 10000, 0.4), (51, 10000, 0.2),
    (200, 10000, 0.2), (201, 10000, 0.1), (501, 10000, 0.05), (1000, 10000, 0.05),
    (1001, 10000, 0.025), (2001, 10000, 0.0125), (4001, 10000, 0.00625),
    (6001, 10000, 0.003125), (8000, 10000, 0.003125), (8001, 10000, 0.0015625),
    (9999, 10000, 0.0015625),
    # 5,000 queries: int(it / 5000 * 10000) = 2 it.
    (5, 5000, 0.8), (6, 5000, 0.4), (25, 5000, 0.4), (26, 5000, 0.2), (2500, 5000, 0.00625),
    (4999, 5000, 0.0015625),
])
def test_p_schedule_is_the_published_one(iteration, n_iters, p):
  assert square.p_selection(0.8, iteration, n_iters) == pytest.approx(p, rel=1e-12)


def test_square_sides_on_mnist_shapes():
  assert square.square_side(0.8, 28, 28) == 25    # sqrt(627.2) = 25.04
  assert square.square_side(0.4, 28, 28) == 18    # sqrt(313.6) = 17.7
  assert square.square_side(0.05, 28, 28) == 6    # sqrt(39.2) = 6.26
  assert square.square_side(0.0015625, 28, 28) == 1  # sqrt(1.2) = 1.1
  assert square.square_side(1e-6, 28, 28) == 1    # at least one pixel
  assert square.square_side(1.0, 28, 28) == 27    # at most H - 1
  sides = square.square_sides(5000, 0.8, 28, 28)
  assert len(sides) == 4999 and list(sides[:7]) == [25] * 6 + [18]


# ----------------------------------------------------------------------------- evaluate.py
def test_evaluate_builds_the_square_row_as_a_batch_eval():
  from l2lda_jax import robustness
  w = jax.random.normal(jax.random.PRNGKey(0), (HW * HW, 10)) * 0.3
  apply_fn = lambda variables, x: x.reshape(x.shape[0], -1) @ variables['w']
  classifier = robustness.Classifier(config=None, apply_fn=apply_fn, variables={'w': w}, step=0)
  [(name, batch_eval, key)] = robustness._batch_evals_for(
      parse_attack('square50'), classifier, None, None, 0.1, jax.random.PRNGKey(0), print, {})
  images = jax.random.randint(jax.random.PRNGKey(1), (8, HW, HW, 1), 0, 256).astype(jnp.uint8)
  x = images.astype(jnp.float32) / 255.0
  y = jnp.argmax(apply_fn({'w': w}, x), -1)
  correct, linf, box = batch_eval({'w': w}, images, y, key)
  x_adv = attacks.square_linf(functools.partial(apply_fn, {'w': w}), x, y, key, eps=0.1,
                              n_queries=50)
  assert name == 'square50'
  np.testing.assert_array_equal(correct, jnp.argmax(apply_fn({'w': w}, x_adv), -1) == y)
  assert float(jnp.mean(correct)) < 1.0  # it broke some
  assert float(jnp.max(linf)) <= 0.1 + 1e-6 and float(jnp.max(box)) == 0.0


# ----------------------------------------------------------------------------- names
def test_parse_square_names():
  assert parse_attack('square') == AttackSpec('square', 'square', 5000)
  assert parse_attack('Square1000') == AttackSpec('square1000', 'square', 1000)
  with pytest.raises(AttackNameError, match='at least one query'):
    parse_attack('square0')
  with pytest.raises(AttackNameError, match='unknown attack'):
    parse_attack('square10x2')
