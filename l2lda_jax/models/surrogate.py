"""ReLU with a smooth backward pass: the classifier an attacker sees where ReLUs are dead.

A classifier trained against gradient-fed attacks can learn first-layer units that stay
off under every perturbation its attacker tries (a thresholding layer): there its input
gradient is exactly zero and a gradient-fed attacker is blind, while a score-based one
(Square) is not. `surrogate_relu(temperature)` computes relu(x) forward and
sigmoid(x / temperature) * g backward (the derivative of temperature * softplus(x /
temperature)), so a dead unit still says which way would switch it on. The forward
values, hence the logits and every prediction, are unchanged: this is BPDA's idea
(Athalye et al. 2018) applied to ReLU.
"""

import functools

import jax
import jax.numpy as jnp


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def _relu_softplus_grad(x: jax.Array, temperature: float) -> jax.Array:
  return jnp.maximum(x, 0.0)


def _forward(x, temperature):
  return jnp.maximum(x, 0.0), x


def _backward(temperature, x, grad):
  return (grad * jax.nn.sigmoid(x / temperature),)


_relu_softplus_grad.defvjp(_forward, _backward)


def surrogate_relu(temperature: float):
  """relu forward, sigmoid(x / temperature) backward; temperature 0 means the plain relu."""
  if temperature < 0:
    raise ValueError(f'surrogate relu temperature must be >= 0, got {temperature}')
  if temperature == 0:
    return jax.nn.relu
  return functools.partial(_relu_softplus_grad, temperature=float(temperature))
