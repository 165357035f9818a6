"""Is the parked learned attack's tanh saturated, and is the gradient it is fed zero?

what_the_clip_hides.py found that passing the gradient through the eps clip does not unpark
the attack trained against surrogate C. Two readings are left, both measured here on
Table 3's cached transfer generators attacking their own surrogates (one z draw, the first
1,000 test images, as stuck_at_the_edge.py), per step t of T = 10:
  - tanh saturation: the share of pixels with |tanh(G)| > 0.99, where tanh' < 0.02 and the
    generator's own output passes almost no gradient back, whatever the clip does;
  - zero input gradients: the share of pixels whose loss gradient is exactly 0 (a
    thresholding first layer, usual after PGD training), which stuck_at_the_edge.py's
    "moved along the gradient" counts as not followed.

  PYTHONPATH=. python docs/reproduction/l2lda_attack_spread/saturated_tanh.py DIR
"""
import contextlib, os, sys
import jax, jax.numpy as jnp
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from stuck_at_the_edge import (cached_transfer_attack, names, surrogate_and_test_images,  # noqa: E402
                               trajectory)
from l2lda_jax import l2lda  # noqa: E402
from l2lda_jax.attacks import learned  # noqa: E402


@contextlib.contextmanager
def recording():
  """Within it, eagerly, the library's own attack cell runs unchanged; the two functions it
  calls are wrapped so that each step's tanh(G) and input gradient land, at exit, as
  (tanh_g, grad) pairs in the yielded list."""
  input_gradient, generator_fn_for = learned.input_gradient, l2lda.generator_fn_for
  gradients, outputs, rows = [], [], []

  def recording_gradient(*args):
    grad = input_gradient(*args)
    gradients.append(grad)
    return grad

  def recording_generator_fn_for(*args, **kwargs):
    generator_fn = generator_fn_for(*args, **kwargs)

    def recording_generator_fn(*inputs):
      direction, batch_stats = generator_fn(*inputs)
      outputs.append(jnp.tanh(direction))
      return direction, batch_stats

    return recording_generator_fn

  learned.input_gradient, l2lda.generator_fn_for = recording_gradient, recording_generator_fn_for
  try:
    with jax.disable_jit():  # eager, so the lists hold arrays, not tracers
      yield rows
  finally:
    learned.input_gradient, l2lda.generator_fn_for = input_gradient, generator_fn_for
    rows.extend(zip(outputs, gradients))


def print_rows(rows):
  print('  step   |tanh G| mean  |tanh G| > 0.99  input gradient exactly 0')
  for t, (tanh_g, grad) in enumerate(rows, start=1):
    print(f'  {t:>4}  {float(jnp.mean(jnp.abs(tanh_g))):9.3f}  '
          f'{float(jnp.mean(jnp.abs(tanh_g) > 0.99)):12.3f}  {float(jnp.mean(grad == 0)):14.3f}')


if __name__ == '__main__':
  for name in names:
    surrogate, dataset, logits_fn, x, y = surrogate_and_test_images(name)
    attack = cached_transfer_attack(surrogate, dataset)
    with recording() as rows:
      trajectory(attack, logits_fn, x, y)
    print(f'{name}:')
    print_rows(rows)
    sys.stdout.flush()
