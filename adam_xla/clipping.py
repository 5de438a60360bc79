"""Gradient clipping with the Keras options `clipvalue`, `clipnorm` and `global_clipnorm`.

Clipping sees the gradient summed over replicas, as in Keras. Sparse gradients must already
have their duplicate indices summed (`sparse.sum_duplicates`), so that norms and element
bounds are those of the dense gradient. With `clipvalue` and a norm clip both set, values are
clipped first (the order of Keras 2, which allowed the combination; Keras 3 does not).
"""

import dataclasses
from typing import Optional

import tensorflow as tf


@dataclasses.dataclass(frozen=True)
class ClipConfig:
  """Which clipping to apply; None switches an option off."""

  clipnorm: Optional[float] = None
  clipvalue: Optional[float] = None
  global_clipnorm: Optional[float] = None


def _map_values(fn, grad):
  if isinstance(grad, tf.IndexedSlices):
    return tf.IndexedSlices(fn(grad.values), grad.indices, grad.dense_shape)
  return fn(grad)


def clip_gradients(grads, config: ClipConfig):
  """Returns `grads` (a list of tensors or IndexedSlices) clipped as `config` says."""
  grads = list(grads)
  if config.clipvalue is not None:
    bound = config.clipvalue
    grads = [_map_values(lambda g: tf.clip_by_value(g, -bound, bound), g) for g in grads]
  if config.clipnorm is not None:
    grads = [_map_values(lambda g: g * _shrink_factor(tf.norm(g), config.clipnorm, g.dtype), g)
             for g in grads]
  if config.global_clipnorm is not None:
    factor = _shrink_factor(tf.linalg.global_norm(grads), config.global_clipnorm,
                            grads[0].dtype)
    grads = [_map_values(lambda g: g * tf.cast(factor, g.dtype), g) for g in grads]
  return grads


def _shrink_factor(norm, limit, dtype):
  """min(1, limit / norm): exactly 1 below the limit, so unclipped gradients are untouched.

  (Keras computes g * limit / max(norm, limit), which can change the last bit of gradients
  that are not clipped at all.) A non-finite norm gives a non-finite factor, as in Keras.
  """
  norm = tf.cast(norm, dtype)
  return tf.minimum(tf.constant(1, dtype), tf.constant(limit, dtype) / norm)
