"""evaluate.py with the generator initialised eagerly, as before df8ddf7 (to test that the
last-bit init difference alone explains the changed trajectory)."""
import runpy, sys, jax, jax.numpy as jnp
from l2lda_jax import l2lda

def eager_init(generator, gen_tx, settings, image_shape, seed):
  h, w, c = image_shape
  inputs = jnp.zeros((2, h, w, l2lda.generator_input_channels(settings, c)))
  variables = generator.init(jax.random.PRNGKey(seed + 7919), inputs,
                             jnp.zeros((2, settings.z_dim)), jnp.zeros((2,), jnp.int32))
  return l2lda.GeneratorState(variables['params'], variables['batch_stats'],
                              gen_tx.init(variables['params']))

l2lda.init_generator_state = eager_init
sys.argv = ['evaluate.py'] + sys.argv[1:]
runpy.run_path('evaluate.py', run_name='__main__')
