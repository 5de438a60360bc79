"""Internal: the dynamic loss scale of float16 training, as a pure transition of its state.

The loss is multiplied by `scale` before the gradients are taken and the gradients divided by
it after, so that small float16 gradients do not flush to zero. A step whose gradients
overflow is skipped and halves the scale (never below 1); `growth_interval` good steps in a
row double it. The state (scale, good steps in a row) lives in the train step's variables, so
that it is checkpointed with it.
"""

import tensorflow as tf


def next_state(scale, good_steps, applied, growth_interval):
  """(scale, good_steps) after a step whose gradients were finite iff `applied`."""
  good = tf.where(applied, good_steps + 1, tf.constant(0, tf.int64))
  grow = good >= growth_interval
  scale = tf.where(applied, tf.where(grow, scale * 2.0, scale), tf.maximum(scale / 2.0, 1.0))
  return scale, tf.where(grow, tf.constant(0, tf.int64), good)
