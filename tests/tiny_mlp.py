"""A tiny MLP on synthetic 14 x 14 "digits", in JAX and (same weights) in PyTorch: the model
the attack tests compare with torchattacks on (tests/test_apgd.py, tests/test_fab.py)."""

import contextlib
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax

SIDE, HIDDEN, CLASSES = 14, 32, 10


def synthetic_digits(n, seed):
  """Ten smooth random prototypes (a 4 x 4 grid upsampled, contrast halved), plus noise."""
  coarse = jax.random.uniform(jax.random.PRNGKey(0), (CLASSES, 4, 4, 1))
  protos = 0.5 + 0.5 * (jax.image.resize(coarse, (CLASSES, SIDE, SIDE, 1), 'bilinear') - 0.5)
  y = jax.random.randint(jax.random.PRNGKey(100 + seed), (n,), 0, CLASSES)
  noise = 0.15 * jax.random.normal(jax.random.PRNGKey(200 + seed), (n, SIDE, SIDE, 1))
  return jnp.clip(protos[y] + noise, 0.0, 1.0), y


def mlp(params, x):
  hidden = jax.nn.relu(x.reshape(x.shape[0], -1) @ params['w1'] + params['b1'])
  return hidden @ params['w2'] + params['b2']


def fit_tiny_mlp():
  """(params, logits_fn, test images, labels): a 196-32-10 MLP, 200 Adam steps."""
  x, y = synthetic_digits(512, 0)
  k1, k2 = jax.random.split(jax.random.PRNGKey(1))
  params = {'w1': jax.random.normal(k1, (SIDE * SIDE, HIDDEN)) / SIDE,
            'b1': jnp.zeros(HIDDEN),
            'w2': jax.random.normal(k2, (HIDDEN, CLASSES)) / 6.0, 'b2': jnp.zeros(CLASSES)}
  optimizer = optax.adam(1e-2)

  def step(carry, _):
    params, state = carry
    grads = jax.grad(lambda p: optax.softmax_cross_entropy_with_integer_labels(
        mlp(p, x), y).mean())(params)
    updates, state = optimizer.update(grads, state)
    return (optax.apply_updates(params, updates), state), None

  (params, _), _ = jax.jit(lambda c: jax.lax.scan(step, c, None, length=200))(
      (params, optimizer.init(params)))
  x_test, y_test = synthetic_digits(200, 1)
  return params, functools.partial(mlp, params), x_test, y_test


def accuracy(logits_fn, x, y):
  return float(jnp.mean(jnp.argmax(logits_fn(x), -1) == y))


def torch_mlp(params):
  """The same MLP in PyTorch; NCHW with one channel flattens in the same order as NHWC."""
  import torch
  model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(SIDE * SIDE, HIDDEN),
                              torch.nn.ReLU(), torch.nn.Linear(HIDDEN, CLASSES))
  with torch.no_grad():
    model[1].weight.copy_(torch.from_numpy(np.asarray(params['w1']).T.copy()))
    model[1].bias.copy_(torch.from_numpy(np.array(params['b1'])))
    model[3].weight.copy_(torch.from_numpy(np.asarray(params['w2']).T.copy()))
    model[3].bias.copy_(torch.from_numpy(np.array(params['b2'])))
  return model.eval()


@contextlib.contextmanager
def one_torch_thread():
  """torch on one thread: on a small, busy CPU its thread pool is ~20x slower than one."""
  import torch
  threads = torch.get_num_threads()
  torch.set_num_threads(1)
  try:
    yield
  finally:
    torch.set_num_threads(threads)
