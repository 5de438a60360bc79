"""Internal: Adam's slot variables (m, v and, with amsgrad, vhat) and their checkpoint keys.

Each variable's slots are created in that variable's own distribution context, so they are
placed, mirrored and saved like it. They are saved under readable keys, "<variable
name>/<slot name>" (a Keras variable's `path`), made unique in creation order, in a dict the
optimizer tracks: a checkpoint restored before the slots exist is applied as they are created
(TF's deferred restoration).

Packed slots. A compiled call costs a few microseconds per variable it reads or writes,
whatever the variable's size, so a model with many small variables spends most of its update
on that cost. The m and v of small variables that the CPU kernel updates are therefore kept
in one flat buffer each per build and device set: two variables instead of two per variable.
Each such variable's slot is then a `PackedSlot`, a view of its range that is saved and
restored under the same key, with the same value and shape, as a variable of its own would be,
so checkpoints do not depend on the layout.
"""

from typing import NamedTuple

import numpy as np
import tensorflow as tf

from adam_xla import distribution
from adam_xla import update_rule

# Variables up to this many elements are packed: above it the per-variable cost of a call is
# small beside the time the update spends on the variable's memory.
PACK_MAX_ELEMENTS = 1 << 20


class Packed(NamedTuple):
  """A variable's m and v as elements [offset, offset + size) of flat buffers shared with
  other variables (one device's buffers in an update, the distributed ones elsewhere)."""

  m: tf.Variable
  v: tf.Variable
  offset: int
  size: int


class SlotTable:
  """The slots of every variable an optimizer has built, by variable."""

  def __init__(self, prefix, slot_names, saved):
    """`prefix` starts the variables' names; `saved` is the tracked dict of keys -> slots."""
    self._prefix, self._names, self._saved = prefix, slot_names, saved
    self._by_variable, self._views, self._keys = {}, {}, set()

  def __contains__(self, var):
    return var.ref() in self._by_variable

  def __getitem__(self, var):
    """`var`'s slots: `update_rule.Moments` (vhat None without amsgrad), or `Packed`."""
    return self._by_variable[var.ref()]

  def variables(self):
    """The variables that have slots, in the order they were built."""
    return [ref.deref() for ref in self._by_variable]

  def slot(self, var, name):
    """`var`'s slot `name`: its variable, or the `PackedSlot` view of its range."""
    views = self._views.get(var.ref())
    return views[name] if views else getattr(self[var], name)

  def slot_objects(self, var):
    """`var`'s slots in `slot_names` order (variables or views): what Keras saves."""
    return [self.slot(var, name) for name in self._names]

  def create(self, variables, packable):
    """Zero-filled slots for `variables`, placed and replicated like each. Those for which
    `packable(var)` holds share flat m and v buffers, one pair per dtype and set of devices."""
    keys = [self._unique_key(var) for var in variables]  # in order: keys never depend on packing
    groups = {}
    for var in variables:
      if packable(var) and 0 < var.shape.num_elements() <= PACK_MAX_ELEMENTS:
        devices = tuple(c.device for c in getattr(var, "values", (var,)))
        groups.setdefault((var.dtype.base_dtype, devices), []).append(var)
    ranges = {}
    for group in groups.values():
      if len(group) > 1:
        ranges.update(self._packed_buffers(group))
    for var, key in zip(variables, keys):
      if var.ref() in ranges:
        self._add_packed(var, key, ranges[var.ref()])
      else:
        self._add_own(var, key)

  def _add_own(self, var, key):
    with distribution.creation_scope(var):
      slots = {name: tf.Variable(tf.zeros(var.shape, var.dtype), trainable=False,
                                 name=f"{self._prefix}/{key}/{name}")
               for name in self._names}
    self._by_variable[var.ref()] = update_rule.Moments(**slots)
    for name, slot in slots.items():
      self._saved[f"{key}/{name}"] = slot

  def _packed_buffers(self, group):
    """Flat m and v buffers for `group`, placed like its first variable: {ref: Packed}."""
    assert tuple(self._names) == ("m", "v"), self._names  # amsgrad's vhat is never packed
    sizes = [var.shape.num_elements() for var in group]
    offsets = np.cumsum([0] + sizes).tolist()
    with distribution.creation_scope(group[0]):
      m, v = (tf.Variable(tf.zeros([offsets[-1]], group[0].dtype), trainable=False,
                          name=f"{self._prefix}/packed/{name}") for name in self._names)
    return {var.ref(): Packed(m, v, offset, size)
            for var, offset, size in zip(group, offsets, sizes)}

  def _add_packed(self, var, key, packed):
    self._by_variable[var.ref()] = packed
    views = {name: PackedSlot(getattr(packed, name), packed.offset, var.shape)
             for name in self._names}
    self._views[var.ref()] = views
    for name, view in views.items():  # the buffers exist: a deferred restore can fire here
      self._saved[f"{key}/{name}"] = view

  def _unique_key(self, var):
    base = getattr(var, "path", None) or var.name.split(":")[0]
    key, suffix = base, 1
    while key in self._keys:
      key, suffix = f"{base}_{suffix}", suffix + 1
    self._keys.add(key)
    return key


class PackedSlot(tf.__internal__.tracking.Trackable):
  """One variable's slot: elements [offset, offset + size) of a flat buffer, as `shape`.

  Reads like a variable (`numpy()`, `read_value()`, arithmetic, conversion to a tensor),
  `assign`s every copy of the buffer, and is saved and restored exactly as a variable of that shape would be.
  """

  def __init__(self, flat, offset, shape):
    self._flat, self._offset, self._shape = flat, offset, tf.TensorShape(shape)
    self._size = self._shape.num_elements()

  buffer = property(lambda self: self._flat, doc="The flat buffer (a distributed variable "
                    "under a strategy) this slot is a range of.")
  shape = property(lambda self: self._shape)
  dtype = property(lambda self: self._flat.dtype)
  device = property(lambda self: self._flat.device)

  @property
  def values(self):
    """One view per local copy of the buffer (under a strategy; else this view alone)."""
    copies = getattr(self._flat, "values", None)
    return tuple(PackedSlot(c, self._offset, self._shape) for c in copies) if copies else (
        self,)

  def read_value(self):
    flat = tf.convert_to_tensor(self._flat)
    return tf.reshape(flat[self._offset:self._offset + self._size], self._shape)

  value = read_value

  def numpy(self):
    return self.read_value().numpy()

  def __array__(self, dtype=None, copy=None):
    del copy  # numpy() is a fresh array already
    return np.asarray(self.numpy(), dtype=dtype)

  def assign(self, value):
    """Writes `value` into this range of every copy of the buffer."""
    value = tf.convert_to_tensor(value, self.dtype)
    if not value.shape.is_compatible_with(self._shape):
      raise ValueError(f"Adam: a value of shape {value.shape} cannot be assigned to a slot of "
                       f"shape {self._shape}.")
    value = tf.reshape(value, [self._size])
    for copy in getattr(self._flat, "values", (self._flat,)):
      tf.raw_ops.ResourceStridedSliceAssign(
          ref=copy.handle, begin=[self._offset], end=[self._offset + self._size], strides=[1],
          value=value)
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


def _reads_value(operator):
  return lambda view, *args: getattr(view.read_value(), operator)(*args)


for _operator in ("__add__", "__radd__", "__sub__", "__rsub__", "__mul__", "__rmul__",
                  "__truediv__", "__rtruediv__", "__pow__", "__rpow__", "__neg__", "__abs__",
                  "__getitem__", "__lt__", "__le__", "__gt__", "__ge__"):
  setattr(PackedSlot, _operator, _reads_value(_operator))
tf.register_tensor_conversion_function(
    PackedSlot, lambda view, dtype=None, name=None, as_ref=False: view.read_value())
