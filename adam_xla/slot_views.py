"""Internal: a slot that is a view of part of a larger buffer, saved as a variable of its own.

Packed slots (`slots.PackedSlot`, a range of a flat buffer) and sharded slots
(`sharding.ShardedSlot`, ranges of every replica's share) are views. A view reads, converts
and does arithmetic like a variable, `assign`s every copy of what it covers, and is saved and
restored under its own key with its variable's shape and value, so that checkpoints, `.keras`
files and `Adam.slot` do not depend on how the optimizer lays out its state.
"""

import numpy as np
import tensorflow as tf


class SlotView(tf.__internal__.tracking.Trackable):
  """A slot of `shape` and `dtype` stored elsewhere; subclasses say where (`read_value` and
  `_write`, which takes the new value as a flat tensor of the slot's size)."""

  def __init__(self, shape, dtype):
    self._shape, self._dtype = tf.TensorShape(shape), dtype
    self._size = self._shape.num_elements()

  shape = property(lambda self: self._shape)
  dtype = property(lambda self: self._dtype)

  def read_value(self):
    raise NotImplementedError

  def _write(self, flat_value):
    raise NotImplementedError

  def value(self):
    return self.read_value()

  def numpy(self):
    return self.read_value().numpy()

  def __array__(self, dtype=None, copy=None):
    del copy  # numpy() is a fresh array already
    return np.asarray(self.numpy(), dtype=dtype)

  def assign(self, value):
    """Writes `value` into every copy of this slot's elements."""
    value = tf.convert_to_tensor(value, self.dtype)
    if not value.shape.is_compatible_with(self._shape):
      raise ValueError(f"Adam: a value of shape {value.shape} cannot be assigned to a slot of "
                       f"shape {self._shape}.")
    self._write(tf.reshape(value, [self._size]))
    return self

  def _serialize_to_tensors(self):
    return {"VARIABLE_VALUE": self.read_value()}

  def _restore_from_tensors(self, restored_tensors):
    value = restored_tensors["VARIABLE_VALUE"]
    if not self._shape.is_compatible_with(value.shape):
      raise ValueError(f"Adam: a checkpointed slot of shape {value.shape} cannot be restored "
                       f"into a slot of shape {self._shape}.")
    with tf.init_scope():
      self.assign(value)

  def _copy_trackable_to_cpu(self, object_map):
    """For async checkpoints: a CPU variable holding this slot's value at save time."""
    if self not in object_map:
      with tf.device("/cpu:0"):
        object_map[self] = tf.Variable(self.read_value(), trainable=False)
    else:
      object_map[self].assign(self.read_value())


def write_range(variable, begin, value):
  """Writes the 1-D `value` into elements [begin, begin + len) of the 1-D `variable`."""
  tf.raw_ops.ResourceStridedSliceAssign(ref=variable.handle, begin=[begin],
                                        end=[begin + value.shape[0]], strides=[1], value=value)


def _reads_value(operator):
  return lambda view, *args: getattr(view.read_value(), operator)(*args)


for _operator in ("__add__", "__radd__", "__sub__", "__rsub__", "__mul__", "__rmul__",
                  "__truediv__", "__rtruediv__", "__pow__", "__rpow__", "__neg__", "__abs__",
                  "__getitem__", "__lt__", "__le__", "__gt__", "__ge__"):
  setattr(SlotView, _operator, _reads_value(_operator))
tf.register_tensor_conversion_function(
    SlotView, lambda view, dtype=None, name=None, as_ref=False: view.read_value())
