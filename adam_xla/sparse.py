"""Sparse gradients (`tf.IndexedSlices`) in forms that give the same result as dense ones.

An embedding lookup's gradient repeats an index once per occurrence in the batch; the dense
gradient is their sum. Everything here keeps static shapes: `tf.unique` returns a length that
depends on the data, which TPU compilation rejects and which makes XLA:CPU/GPU compile for a
bounded dynamic shape; a sort and a segment sum of the input's length do not.
"""

import tensorflow as tf


def to_dense(grad: tf.IndexedSlices, num_rows) -> tf.Tensor:
  """The dense gradient: duplicate indices summed, absent rows zero."""
  return tf.math.unsorted_segment_sum(grad.values, grad.indices, num_rows)


def sum_duplicates(grad: tf.IndexedSlices) -> tf.IndexedSlices:
  """Sums the values of repeated indices, keeping the static length of the input.

  The result has one entry per distinct index, followed by padding entries whose index is
  the first entry's index and whose value is zero. Zero padding leaves norms and clipping
  exactly as for the dense gradient; `first_entry_padding` makes padded entries repeat the
  first entry's row, so that a scatter writes that row's value twice rather than a wrong one.
  """
  indices = tf.reshape(grad.indices, [-1])
  values = tf.reshape(grad.values, tf.concat([[-1], tf.shape(grad.values)[1:]], 0))
  size = tf.size(indices)
  order = tf.argsort(indices, stable=True)
  sorted_indices = tf.gather(indices, order)
  starts_run = tf.concat([[True], sorted_indices[1:] != sorted_indices[:-1]], 0)
  segment = tf.cumsum(tf.cast(starts_run, tf.int32)) - 1
  summed = tf.math.unsorted_segment_sum(tf.gather(values, order), segment, size)
  num_unique = segment[-1] + 1
  slot = tf.range(size)
  unique_indices = tf.math.unsorted_segment_max(sorted_indices, segment, size)
  unique_indices = tf.where(slot < num_unique, unique_indices, sorted_indices[0])
  return tf.IndexedSlices(summed, unique_indices, grad.dense_shape)


def first_entry_padding(grad: tf.IndexedSlices) -> tf.Tensor:
  """For the output of `sum_duplicates`: values with padding entries copied from entry 0."""
  indices = grad.indices
  is_entry = tf.logical_or(tf.range(tf.size(indices)) == 0, indices != indices[0])
  source = tf.where(is_entry, tf.range(tf.size(indices)), 0)
  return tf.gather(grad.values, source)
