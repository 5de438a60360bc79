"""Internal: sparse gradients (`tf.IndexedSlices`) in forms that give the same result as dense ones.

An embedding lookup's gradient repeats an index once per occurrence in the batch; the dense
gradient is their sum. Everything here keeps static shapes: `tf.unique` returns a length that
depends on the data, which TPU compilation rejects and which makes XLA:CPU/GPU compile for a
bounded dynamic shape; a sort and a segment sum of the input's length do not. An empty
IndexedSlices (a batch without ids for a table) goes through as an empty one.

Indices must lie in [0, rows). `Adam.apply_gradients` refuses others when it runs eagerly;
inside a traced or compiled program they are not checked (that would cost a pass over the ids
and, on TPU, a host round trip). Under XLA both modes then ignore them: the scatters of their
updates drop out-of-range rows (without XLA, TF raises for them). Dense mode also zeroes their
values (`zero_out_of_range`), so that they are left out of clipping norms as they are left out
of the dense gradient.
"""

import tensorflow as tf


def to_dense(grad: tf.IndexedSlices, num_rows) -> tf.Tensor:
  """The dense gradient: duplicate indices summed, absent rows zero."""
  return tf.math.unsorted_segment_sum(grad.values, grad.indices, num_rows)


def zero_out_of_range(grad: tf.IndexedSlices, num_rows) -> tf.IndexedSlices:
  """`grad` with zero values at indices outside [0, num_rows), which the dense gradient drops."""
  indices = grad.indices
  inside = tf.logical_and(indices >= 0, indices < tf.cast(num_rows, indices.dtype))
  inside = tf.reshape(inside, [-1] + [1] * (grad.values.shape.rank - 1))  # one per row
  values = tf.where(inside, grad.values, tf.zeros([], grad.values.dtype))
  return tf.IndexedSlices(values, indices, grad.dense_shape)


def sum_duplicates(grad: tf.IndexedSlices) -> tf.IndexedSlices:
  """Sums the values of repeated indices, keeping the static length of the input.

  The result has one entry per distinct index, followed by padding entries whose index is
  the first entry's index and whose value is zero. Zero padding leaves norms and clipping
  exactly as for the dense gradient, and a scatter-add of the result (dense mode) adds nothing
  there. For a scatter that overwrites rows (lazy mode), `first_entry_padding` makes padded
  entries repeat the first entry's row, so that the row gets its value twice, not a wrong one.
  """
  indices = tf.reshape(grad.indices, [-1])
  values = tf.reshape(grad.values, tf.concat([[-1], tf.shape(grad.values)[1:]], 0))
  size = tf.size(indices)
  order = tf.argsort(indices, stable=True)
  sorted_indices = tf.gather(indices, order)
  # `first` has length min(1, size), unlike [True] or sorted_indices[0]: empty stays empty.
  first = sorted_indices[:1]
  starts_run = tf.concat([tf.ones_like(first, tf.bool), sorted_indices[1:] != sorted_indices[:-1]],
                         0)
  runs = tf.cast(starts_run, tf.int32)
  segment = tf.cumsum(runs) - 1
  summed = tf.math.unsorted_segment_sum(tf.gather(values, order), segment, size)
  num_unique = tf.reduce_sum(runs)
  slot = tf.range(size)
  unique_indices = tf.math.unsorted_segment_max(sorted_indices, segment, size)
  unique_indices = tf.where(slot < num_unique, unique_indices, first)
  return tf.IndexedSlices(summed, unique_indices, grad.dense_shape)


def first_entry_padding(grad: tf.IndexedSlices) -> tf.Tensor:
  """For the output of `sum_duplicates`: values with padding entries copied from entry 0."""
  indices = grad.indices
  slot = tf.range(tf.size(indices))
  is_entry = tf.logical_or(slot == 0, indices != indices[:1])  # [:1]: empty stays empty
  source = tf.where(is_entry, slot, 0)
  return tf.gather(grad.values, source)
