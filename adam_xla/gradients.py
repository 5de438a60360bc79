"""Internal: the gradients an optimizer accepts, checked and in the form the update needs.

One owner for what Keras users expect of `apply_gradients`: no pairs at all is a no-op; pairs
whose gradient is None are dropped with a warning (the variable does not reach the loss); each
gradient is cast to its variable's dtype and must have its shape (no broadcasting); a sparse
gradient's indices and dense shape become tensors (Keras accepts Python tuples there), and its
indices are checked where they can be (eagerly); each variable's constraint is read from the
variable as given (`constraints`). After the replica sum, `canonical` gives a sparse gradient
the form that clipping and the update rely on.
"""

import warnings

import numpy as np
import tensorflow as tf

from adam_xla import distribution
from adam_xla import sparse


def accepted(grads_and_vars):
  """(gradients, variables) of the pairs with a gradient, each checked against its variable;
  two empty lists when no pairs are given (Keras' `apply` does nothing then)."""
  grads, variables = _drop_missing(grads_and_vars)
  return [_checked_gradient(g, v) for g, v in zip(grads, variables)], variables


def constraints(grads_and_vars):
  """The constraint (None if none) of each variable `accepted` keeps, in its order.

  Read from the variables as given, as Keras does at each step: a Keras variable holds its
  constraint, and the tf.Variable behind it has none.
  """
  return [getattr(v, "constraint", None) for g, v in grads_and_vars if g is not None]


def canonical(grad, var, sparse_mode):
  """A sparse gradient with its repeated rows summed (both modes), so that clipping sees the
  dense gradient's norms without a table-sized dense gradient being built; in dense mode its
  out-of-range rows are zeroed first, as the dense gradient drops them."""
  if not isinstance(grad, tf.IndexedSlices):
    return grad
  if sparse_mode == "dense":
    grad = sparse.zero_out_of_range(grad, var.shape[0])
  return sparse.sum_duplicates(grad)


def _checked_gradient(grad, var):
  """`grad` in `var`'s dtype, with its shape checked against `var`'s.

  A gradient that already has the dtype is returned as it is (no cast op). Shapes must match
  exactly: a scalar or (1,) gradient broadcast over a larger variable would hide a bug in the
  caller (Keras would broadcast it). Static shapes are checked when traced; unknown dimensions
  are left to the ops.
  """
  dtype = var.dtype.base_dtype
  if isinstance(grad, tf.IndexedSlices):
    values = _cast_gradient(grad.values, dtype, var)
    rows = tf.TensorShape([None]).concatenate(var.shape[1:])  # one row per index
    if var.shape.rank == 0 or not values.shape.is_compatible_with(rows):
      raise ValueError(
          f"Adam: the tf.IndexedSlices gradient of variable '{var.name}' has values of shape "
          f"{values.shape}, whose rows do not fit the variable's shape {var.shape}: each row "
          f"must have shape {var.shape[1:]}.")
    indices = _indices_tensor(grad.indices, var)
    if tf.executing_eagerly():
      _check_indices(indices, var)
    dense_shape = (None if grad.dense_shape is None else tf.convert_to_tensor(
        grad.dense_shape, dtype_hint=tf.int64))
    return tf.IndexedSlices(values, indices, dense_shape)
  tensor = _cast_gradient(grad, dtype, var)
  if not tensor.shape.is_compatible_with(var.shape):
    raise ValueError(f"Adam: the gradient of variable '{var.name}' has shape {tensor.shape}, "
                     f"but the variable has shape {var.shape}; a gradient must have its "
                     "variable's shape (it is not broadcast).")
  return tensor


def _cast_gradient(value, dtype, var):
  """A tensor of `dtype`; a list or NumPy array is converted straight to it when it can be."""
  tensor = tf.convert_to_tensor(value, dtype_hint=dtype)
  if tensor.dtype == dtype:
    return tensor
  if not (tensor.dtype.is_floating or tensor.dtype.is_integer):
    raise TypeError(f"Adam: the gradient of variable '{var.name}' is {tensor.dtype.name}; "
                    "gradients must be real numbers, which are cast to the variable's dtype "
                    f"({dtype.name}).")
  return tf.cast(tensor, dtype)


def _indices_tensor(indices, var):
  """`indices` as an integer tensor: a tuple or list (which Keras accepts) becomes int64."""
  indices = tf.convert_to_tensor(indices, dtype_hint=tf.int64)
  if not indices.dtype.is_integer:
    raise TypeError(f"Adam: the tf.IndexedSlices gradient of variable '{var.name}' has "
                    f"{indices.dtype.name} indices; indices must be integers.")
  return indices


def _check_indices(indices, var):
  """Eagerly only: out-of-range ids would be dropped or fail inside a TF op (see `sparse`)."""
  rows = var.shape[0] if var.shape.rank else None
  ids = np.asarray(indices).reshape(-1)
  bad = ids[(ids < 0) | (ids >= rows)] if rows is not None else ids[ids < 0]
  if bad.size:
    raise ValueError(f"Adam: the tf.IndexedSlices gradient of variable '{var.name}' has index "
                     f"{bad[0]}, outside the variable's rows [0, {rows}).")


def _drop_missing(grads_and_vars):
  pairs = [(g, distribution.as_tf_variable(v)) for g, v in grads_and_vars]
  missing = [v.name for g, v in pairs if g is None]
  kept = [(g, v) for g, v in pairs if g is not None]
  if missing and not kept:
    raise ValueError(f"Adam: no gradients provided for any variable: {missing}.")
  if missing:
    warnings.warn(
        f"Adam: gradients do not exist for variables {missing}; they are not "
        "updated. Check that the loss depends on them.", stacklevel=4)
  return [g for g, _ in kept], [v for _, v in kept]
