"""The optimiser of SPEC section 4 and the classifier update, shared by every method."""

import jax
import jax.numpy as jnp
import optax


def clipped_sgd(learning_rate, momentum: float, weight_decay: float,
                clip_norm: float) -> optax.GradientTransformation:
  """SGD with momentum; gradient-norm clipping before weight decay (PyTorch's order)."""
  return optax.chain(optax.clip_by_global_norm(clip_norm),
                     optax.add_decayed_weights(weight_decay),
                     optax.sgd(learning_rate, momentum=momentum))


def classifier_update(state, model, tx, inputs, labels, penalty=None):
  """One step on CE_mean over `inputs`, the classifier in training mode (SPEC section 4),
  plus `penalty(params)` when given (a regularizer of l2lda_jax.regularizers, weighted).

  `state` is any struct with step, params, batch_stats and opt_state. Returns
  (new_state, loss, logits, grads, penalty value); `loss` is the CE alone, the step counter
  advances by one.
  """

  def loss_fn(params):
    logits, updates = model.apply({'params': params, 'batch_stats': state.batch_stats},
                                  inputs, train=True, mutable=['batch_stats'])
    loss = jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, labels))
    extra = penalty(params) if penalty is not None else jnp.zeros(())
    return loss + extra, (loss, extra, logits, updates)

  (_, (loss, extra, logits, updates)), grads = jax.value_and_grad(
      loss_fn, has_aux=True)(state.params)
  param_updates, opt_state = tx.update(grads, state.opt_state, state.params)
  new_state = state.replace(step=state.step + 1,
                            params=optax.apply_updates(state.params, param_updates),
                            batch_stats=updates.get('batch_stats', state.batch_stats),
                            opt_state=opt_state)
  return new_state, loss, logits, grads, extra
