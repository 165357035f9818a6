"""Projection onto the threat model: the Linf ball around x, then the pixel box."""

import jax
import jax.numpy as jnp


def project_linf(x_adv: jax.Array, x: jax.Array, eps: float,
                 lower: float = 0.0, upper: float = 1.0) -> jax.Array:
  """Proj_X(Proj_S(x_adv)): clip to the eps-ball around x, then to [lower, upper]."""
  return jnp.clip(jnp.clip(x_adv, x - eps, x + eps), lower, upper)


def random_start(key: jax.Array, x: jax.Array, eps: float) -> jax.Array:
  """A uniform draw from the eps-ball around x, clipped to the pixel box."""
  noise = jax.random.uniform(key, x.shape, x.dtype, -eps, eps)
  return jnp.clip(x + noise, 0.0, 1.0)
