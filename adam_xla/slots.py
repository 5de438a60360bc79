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
from adam_xla import sharding
from adam_xla import slot_views
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
    """`var`'s slots: `update_rule.Moments` (vhat None without amsgrad), `Packed` or
    `sharding.Sharded`."""
    return self._by_variable[var.ref()]

  def variables(self):
    """The variables that have slots, in the order they were built."""
    return [ref.deref() for ref in self._by_variable]

  def slot(self, var, name):
    """`var`'s slot `name`: its variable, or its view (`PackedSlot`, `sharding.ShardedSlot`)."""
    views = self._views.get(var.ref())
    return views[name] if views else getattr(self[var], name)

  def slot_objects(self, var):
    """`var`'s slots in `slot_names` order (variables or views): what Keras saves."""
    return [self.slot(var, name) for name in self._names]

  def create(self, variables, packable, shardable=lambda var: False):
    """Zero-filled slots for `variables`, placed and replicated like each. Those for which
    `shardable(var)` holds are split across replicas, one `sharding.Group` per dtype; of the
    others, those for which `packable(var)` holds share flat m and v buffers, one pair per
    dtype and set of devices."""
    keys = [self._unique_key(var) for var in variables]  # in order: keys never depend on layout
    groups, sharded = {}, {}
    for var in variables:
      if shardable(var):
        sharded.setdefault(var.dtype.base_dtype, []).append(var)
      elif packable(var) and 0 < var.shape.num_elements() <= PACK_MAX_ELEMENTS:
        devices = tuple(c.device for c in getattr(var, "values", (var,)))
        groups.setdefault((var.dtype.base_dtype, devices), []).append(var)
    ranges = {}
    for group in groups.values():
      if len(group) > 1:
        ranges.update(self._packed_buffers(group))
    for dtype, group in sharded.items():
      state = sharding.Group(group, self._names, group[0].distribute_strategy,
                             f"{self._prefix}/sharded_{dtype.name}")
      ranges.update({var.ref(): sharding.Sharded(state, index) for index, var in enumerate(group)})
    for var, key in zip(variables, keys):
      if var.ref() in ranges:
        self._add_view(var, key, ranges[var.ref()])
      else:
        self._add_own(var, key)

  def groups(self):
    """The `sharding.Group`s, in the order they were built."""
    entries = [self[var] for var in self.variables()]
    found = {id(e.group): e.group for e in entries if isinstance(e, sharding.Sharded)}
    return list(found.values())

  def bytes_per_replica(self):
    """Bytes of the slots one replica holds."""
    held = {}
    for var in self.variables():
      entry = self[var]
      if isinstance(entry, sharding.Sharded):
        held[id(entry.group)] = entry.group.bytes_per_replica()
      else:
        for slot in entry[:len(self._names)]:
          if slot is not None:
            held[id(slot)] = slot.shape.num_elements() * slot.dtype.size
    return sum(held.values())

  def _add_own(self, var, key):
    with distribution.creation_scope(var):
      slots = {
          name: tf.Variable(tf.zeros(var.shape, var.dtype), trainable=False,
                            name=f"{self._prefix}/{key}/{name}") for name in self._names
      }
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
    return {
        var.ref(): Packed(m, v, offset, size) for var, offset, size in zip(group, offsets, sizes)
    }

  def _add_view(self, var, key, entry):
    self._by_variable[var.ref()] = entry
    if isinstance(entry, sharding.Sharded):
      views = {
          name: sharding.ShardedSlot(entry.group, name, entry.index, var.shape)
          for name in self._names
      }
    else:
      views = {
          name: PackedSlot(getattr(entry, name), entry.offset, var.shape) for name in self._names
      }
    self._views[var.ref()] = views
    for name, view in views.items():  # the state exists: a deferred restore can fire here
      self._saved[f"{key}/{name}"] = view

  def _unique_key(self, var):
    base = getattr(var, "path", None) or var.name.split(":")[0]
    key, suffix = base, 1
    while key in self._keys:
      key, suffix = f"{base}_{suffix}", suffix + 1
    self._keys.add(key)
    return key


class PackedSlot(slot_views.SlotView):
  """One variable's slot: elements [offset, offset + size) of a flat buffer, as `shape`."""

  def __init__(self, flat, offset, shape):
    super().__init__(shape, flat.dtype)
    self._flat, self._offset = flat, offset

  buffer = property(
      lambda self: self._flat, doc="The flat buffer (a distributed variable "
      "under a strategy) this slot is a range of.")
  device = property(lambda self: self._flat.device)

  @property
  def values(self):
    """One view per local copy of the buffer (under a strategy; else this view alone)."""
    copies = getattr(self._flat, "values", None)
    return tuple(PackedSlot(c, self._offset, self._shape) for c in copies) if copies else (self,)

  def read_value(self):
    flat = tf.convert_to_tensor(self._flat)
    return tf.reshape(flat[self._offset:self._offset + self._size], self._shape)

  def _write(self, flat_value):
    for copy in getattr(self._flat, "values", (self._flat,)):
      slot_views.write_range(copy, self._offset, flat_value)
