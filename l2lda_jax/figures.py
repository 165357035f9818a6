"""Figure 2 of the paper and a robust-accuracy-vs-eps curve, as PNG plus JSON data.

Figure 2: the classifier's cross-entropy at every step of an attack, for L2L-DA (T
refinements, K z draws), PGD (K random restarts) and L2L* (one shot, deterministic).
Per image, the max and the std over the K draws; the figure shows the mean over images
of both. L2L-DA's diversity shows as a larger spread than PGD's restarts.
"""

from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from l2lda_jax import l2lda
from l2lda_jax.attacks import learned
from l2lda_jax.attacks.losses import cross_entropy
from l2lda_jax.attacks.projection import project_linf, random_start

LogitsFn = Callable[[jax.Array], jax.Array]


def pgd_loss_trace(logits_fn: LogitsFn, x, y, key, *, eps: float, steps: int,
                   step_size: float) -> jax.Array:
  """Per-example CE after each of `steps` PGD steps from a random start: shape (steps, N)."""
  grad_fn = jax.grad(lambda v: jnp.sum(cross_entropy(logits_fn(v), y)))

  def step(x_adv, _):
    x_adv = project_linf(x_adv + step_size * jnp.sign(grad_fn(x_adv)), x, eps)
    return x_adv, cross_entropy(logits_fn(x_adv), y)

  _, losses = jax.lax.scan(step, random_start(key, x, eps), None, length=steps)
  return losses


def generator_loss_trace(attack, logits_fn: LogitsFn, x, y, key) -> jax.Array:
  """Per-example CE after each of the generator's T steps for one z draw: shape (T, N)."""
  settings = attack.settings
  z_dim = max(settings.z_dim, 1)
  z_key, start_key = jax.random.split(key)
  z = jax.random.normal(z_key, (x.shape[0], z_dim))[:, :settings.z_dim]
  x_advs, _, _ = learned.recursive_attack(
      l2lda.generator_fn_for(attack.generator, attack.gen.params), logits_fn, x, y, z,
      attack.gen.batch_stats, settings.options, key=start_key)
  return jax.vmap(lambda x_adv: cross_entropy(logits_fn(x_adv), y))(x_advs)


def draw_statistics(traces: np.ndarray) -> dict:
  """traces (draws, steps, N) -> per step, the mean over images of the max and std over draws."""
  return {'mean_max': np.mean(np.max(traces, axis=0), axis=-1).tolist(),
          'mean_std': np.mean(np.std(traces, axis=0), axis=-1).tolist()}


def loss_curves(trace_fns: dict, x, y, key, draws: int, batch_size: int) -> dict:
  """name -> draw_statistics over `draws` keys, each trace_fn (x, y, key) -> (steps, N)."""
  # Whole batches only (one compilation): a ragged tail is dropped.
  n = len(x) if len(x) < batch_size else len(x) // batch_size * batch_size
  batch = min(batch_size, n)
  curves = {}
  for name, trace_fn in trace_fns.items():
    jitted = jax.jit(trace_fn)
    per_draw = []
    for d in range(draws):
      draw_key = jax.random.fold_in(key, d)
      parts = [np.asarray(jitted(x[i:i + batch], y[i:i + batch], jax.random.fold_in(draw_key, i)))
               for i in range(0, n, batch)]
      per_draw.append(np.concatenate(parts, axis=-1))
    curves[name] = draw_statistics(np.stack(per_draw))
  return curves


def plot_loss_curves(curves: dict, path: str, title: str) -> None:
  """Figure 2: mean max-CE per step with a band of +- the mean std over draws."""
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  fig, ax = plt.subplots(figsize=(6, 4))
  for name, stats in curves.items():
    mean_max, mean_std = np.asarray(stats['mean_max']), np.asarray(stats['mean_std'])
    steps = np.arange(1, len(mean_max) + 1)
    marker = 'o' if len(steps) == 1 else None
    ax.plot(steps, mean_max, marker=marker, label=name)
    ax.fill_between(steps, mean_max - mean_std, mean_max + mean_std, alpha=0.2)
  ax.set_xlabel('attack step')
  ax.set_ylabel('cross-entropy: max over draws,\nmean over images (band: +- std)')
  ax.set_title(title)
  ax.legend()
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def plot_accuracy_vs_eps(eps_values: Sequence[float], accuracies: Sequence[float], path: str,
                         title: str) -> None:
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  fig, ax = plt.subplots(figsize=(5, 4))
  ax.plot(eps_values, [100 * a for a in accuracies], marker='o')
  ax.set_xlabel('eps (Linf)')
  ax.set_ylabel('robust accuracy %')
  ax.set_ylim(0, 100)
  ax.set_title(title)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)
