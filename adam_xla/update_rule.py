"""Internal: the Adam update rule as pure functions of tensors.

No variables, strategies or flags live here, so the same functions serve the eager
path, a `tf.function`, an XLA-compiled step and each device's update under `tf.distribute`
(`engine` decides where they run, and how a skipped step leaves the state alone).

With t = iterations + 1 and epsilon as "epsilon hat" (Kingma & Ba, the formula just before
Section 2.1, the form `tf.keras.optimizers.Adam` documents):

    lr_t = lr * sqrt(1 - beta_2^t) / (1 - beta_1^t)
    m    = beta_1 * m + (1 - beta_1) * g
    v    = beta_2 * v + (1 - beta_2) * g^2
    vhat = max(vhat, v)                      (amsgrad only; replaces v below)
    var  = var - lr_t * m / (sqrt(v) + epsilon)

With decoupled weight decay (AdamW, Loshchilov & Hutter; off by default) the variable first
shrinks by lr * weight_decay * var, with the learning rate not bias-corrected, as in Keras.

Because epsilon is added after the bias correction has been folded into lr_t, it is larger in
effect than the epsilon of Algorithm 1 of the paper; that is why values such as 1.0 or 0.1 are
useful for some models.
"""

from typing import NamedTuple, Optional

import tensorflow as tf


class StepCoefficients(NamedTuple):
  """Per-step scalars shared by every variable of one dtype."""

  lr_t: tf.Tensor
  beta_1: tf.Tensor
  beta_2: tf.Tensor
  epsilon: tf.Tensor
  decay: Optional[tf.Tensor] = None  # lr * weight_decay; None when there is no decay


class Moments(NamedTuple):
  """Adam's state for one tensor (or for some rows of it). `vhat` is None without amsgrad."""

  m: tf.Tensor
  v: tf.Tensor
  vhat: Optional[tf.Tensor] = None


def step_coefficients(learning_rate, beta_1, beta_2, epsilon, iterations, dtype, weight_decay=0.0):
  """Returns the scalars of step t = iterations + 1 in `dtype`."""
  cast = lambda x: _as_dtype(x, dtype)
  t = cast(iterations + 1)
  beta_1, beta_2, learning_rate = cast(beta_1), cast(beta_2), cast(learning_rate)
  lr_t = learning_rate * tf.sqrt(1 - tf.pow(beta_2, t)) / (1 - tf.pow(beta_1, t))
  decay = None if not weight_decay else learning_rate * cast(weight_decay)
  return StepCoefficients(lr_t, beta_1, beta_2, cast(epsilon), decay)


def _as_dtype(value, dtype):
  # tf.cast would first make a Python float a float32 tensor, rounding 0.9 to 0.89999998.
  if isinstance(value, (int, float)):
    return tf.constant(value, dtype)
  return tf.cast(value, dtype)


def adam_step(param, grad, moments, coefficients):
  """Returns (new_param, new_moments) for one Adam step; works on whole tensors or rows."""
  c = coefficients
  m = c.beta_1 * moments.m + (1 - c.beta_1) * grad
  v = c.beta_2 * moments.v + (1 - c.beta_2) * tf.square(grad)
  vhat = None if moments.vhat is None else tf.maximum(moments.vhat, v)
  return _moved(param, m, v if vhat is None else vhat, c), Moments(m, v, vhat)


def adam_step_at_rows(param, indices, row_grads, moments, coefficients):
  """`adam_step` of the dense gradient that is `row_grads` at rows `indices` and 0 elsewhere.

  The dense gradient is never built, which saves a zero-fill and a pass over an embedding
  table: the moments decay over the whole tensor with their gradient terms scatter-added at
  the rows (beta_1 * m + (1 - beta_1) * g there, the dense formula), then `param` moves
  everywhere. Each index must appear once, except entries whose gradient is zero (the padding
  of `sparse.sum_duplicates`), as v needs the square of each row's whole gradient.
  """
  c = coefficients
  positions = tf.expand_dims(indices, -1)
  m = tf.tensor_scatter_nd_add(c.beta_1 * moments.m, positions, (1 - c.beta_1) * row_grads)
  v = tf.tensor_scatter_nd_add(c.beta_2 * moments.v, positions,
                               (1 - c.beta_2) * tf.square(row_grads))
  vhat = None if moments.vhat is None else tf.maximum(moments.vhat, v)
  return _moved(param, m, v if vhat is None else vhat, c), Moments(m, v, vhat)


def _moved(param, m, second_moment, c):
  """The variable after decoupled weight decay and the step of the new moments."""
  if c.decay is not None:
    param = param - c.decay * param
  return param - c.lr_t * m / (tf.sqrt(second_moment) + c.epsilon)
