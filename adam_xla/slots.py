"""Internal: Adam's slot variables (m, v and, with amsgrad, vhat) and their checkpoint keys.

Each variable's slots are created in that variable's own distribution context, so they are
placed, mirrored and saved like it. They are saved under readable keys, "<variable
name>/<slot name>" (a Keras variable's `path`), made unique in creation order, in a dict the
optimizer tracks: a checkpoint restored before the slots exist is applied as they are created
(TF's deferred restoration).
"""

import tensorflow as tf

from adam_xla import distribution
from adam_xla import update_rule


class SlotTable:
  """The slots of every variable an optimizer has built, by variable."""

  def __init__(self, prefix, slot_names, saved):
    """`prefix` starts the variables' names; `saved` is the tracked dict of keys -> slots."""
    self._prefix, self._names, self._saved = prefix, slot_names, saved
    self._by_variable, self._keys = {}, set()

  def __contains__(self, var):
    return var.ref() in self._by_variable

  def __getitem__(self, var):
    """`var`'s slots as `update_rule.Moments` (vhat None without amsgrad)."""
    return self._by_variable[var.ref()]

  def variables(self):
    """The variables that have slots, in the order they were built."""
    return [ref.deref() for ref in self._by_variable]

  def create(self, var):
    """Zero-filled slots for `var`, placed and replicated like it."""
    key = self._unique_key(var)
    with distribution.creation_scope(var):
      slots = {name: tf.Variable(tf.zeros(var.shape, var.dtype), trainable=False,
                                 name=f"{self._prefix}/{key}/{name}")
               for name in self._names}
    self._by_variable[var.ref()] = update_rule.Moments(**slots)
    for name, slot in slots.items():
      self._saved[f"{key}/{name}"] = slot

  def _unique_key(self, var):
    base = getattr(var, "path", None) or var.name.split(":")[0]
    key, suffix = base, 1
    while key in self._keys:
      key, suffix = f"{base}_{suffix}", suffix + 1
    self._keys.add(key)
    return key
