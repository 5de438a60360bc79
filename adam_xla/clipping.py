"""Internal: gradient clipping with the Keras options `clipvalue`, `clipnorm` and `global_clipnorm`.

Clipping sees the gradient summed over replicas, as in Keras. Sparse gradients must already
have their duplicate indices summed (`sparse.sum_duplicates`), so that norms and element
bounds are those of the dense gradient. With `clipvalue` and a norm clip both set, values are
clipped first (the order of Keras 2, which allowed the combination; Keras 3 does not).

Finite gradients are clipped correctly even when their squares overflow (see `_shrink_factors`).
A gradient with an inf or NaN element has no norm: its norm clip factor is NaN, so every
element of it (under `global_clipnorm`, of every gradient) becomes NaN, as with Keras's
`global_clipnorm` and `tf.clip_by_global_norm`, and a finiteness check of the step sees it.
(Keras's `clipnorm` instead zeroes the finite elements of such a gradient.)
"""

import dataclasses
from typing import Optional

import numpy as np
import tensorflow as tf


@dataclasses.dataclass(frozen=True)
class ClipConfig:
  """Which clipping to apply; None switches an option off."""

  clipnorm: Optional[float] = None
  clipvalue: Optional[float] = None
  global_clipnorm: Optional[float] = None


def _values(grad):
  return grad.values if isinstance(grad, tf.IndexedSlices) else grad


def _map_values(fn, grad):
  if isinstance(grad, tf.IndexedSlices):
    return tf.IndexedSlices(fn(grad.values), grad.indices, grad.dense_shape)
  return fn(grad)


def _scale(grad, factor):
  return _map_values(lambda g: g * tf.cast(factor, g.dtype), grad)


def clip_gradients(grads, config: ClipConfig):
  """Returns `grads` (a list of tensors or IndexedSlices) clipped as `config` says."""
  grads = list(grads)
  if config.clipvalue is not None:
    bound = config.clipvalue
    grads = [_map_values(lambda g: tf.clip_by_value(g, -bound, bound), g) for g in grads]
  if config.clipnorm is not None and grads:
    factors = _shrink_factors([[_values(g)] for g in grads], config.clipnorm)
    grads = [_scale(g, factor) for g, factor in zip(grads, factors)]
  if config.global_clipnorm is not None and grads:
    factor, = _shrink_factors([[_values(g) for g in grads]], config.global_clipnorm)
    grads = [_scale(g, factor) for g in grads]
  return grads


def _shrink_factors(groups, limit):
  """min(1, limit / norm) for each group of tensors, norm being the 2-norm of all its elements.

  Exactly 1 below the limit, so unclipped gradients are untouched (Keras computes
  g * limit / max(norm, limit), which can change their last bit). Each factor is in the widest
  dtype of its group: mixed float32 and float64 gradients are measured in float64.

  Squares are summed in one pass. Only if a sum is not finite, because squares of finite values
  overflowed or an element is inf or NaN, is it computed again from the values divided by their
  largest magnitude, inside a tf.cond: the common case costs no extra pass. There, a factor is
  kept at least the dtype's smallest normal number, since a smaller one is flushed to 0 (a zero
  gradient): a float32 norm above limit * 2^126 is only scaled by 2^-126, to at most
  4 * sqrt(size) (float64: limit * 2^1022, and 2^-1022).
  """
  dtypes = [max((x.dtype for x in group), key=lambda d: d.size) for group in groups]
  sums = [_sum_of_squares(group, dtype) for group, dtype in zip(groups, dtypes)]

  def direct():
    return [
        tf.minimum(tf.constant(1, d),
                   tf.constant(limit, d) / tf.sqrt(s)) for s, d in zip(sums, dtypes)
    ]

  def rescaled():
    factors = []
    for group, dtype, total, plain in zip(groups, dtypes, sums, direct()):
      peak = tf.reduce_max(tf.stack([tf.cast(tf.reduce_max(tf.abs(x)), dtype) for x in group]))
      norm_over_peak = tf.sqrt(_sum_of_squares(group, dtype, divisor=peak))
      factor = tf.constant(limit, dtype) / norm_over_peak / peak
      factor = tf.clip_by_value(factor, np.finfo(dtype.as_numpy_dtype).tiny, 1)
      # An inf element makes peak inf, a NaN one the sum NaN (a sum of squares is never
      # NaN otherwise); where() because min/max need not propagate NaN.
      finite = tf.logical_and(tf.math.is_finite(peak), tf.logical_not(tf.math.is_nan(total)))
      factor = tf.where(finite, factor, tf.constant(np.nan, dtype))
      factors.append(tf.where(tf.math.is_finite(total), plain, factor))
    return factors

  return tf.cond(tf.reduce_all([tf.math.is_finite(s) for s in sums]), direct, rescaled)


def _sum_of_squares(group, dtype, divisor=None):
  """The sum of the squared elements of `group`, computed in `dtype` (a cast fuses under XLA)."""
  total = []
  for x in group:
    x = tf.cast(x, dtype)
    total.append(tf.reduce_sum(tf.square(x if divisor is None else x / divisor)))
  return tf.add_n(total)
