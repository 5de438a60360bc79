"""Internal: Adam's state split across replicas (`Adam(shard_state=True)`).

Under MirroredStrategy and MultiWorkerMirroredStrategy each of the N replicas normally keeps
all of m and v and repeats the same update. With sharded state the variables of one build and
dtype are laid end to end as one flat vector of T elements (`Layout`), cut into N shards of
S = ceil(T / N) elements (the last one padded); replica r keeps m and v (and vhat) of shard r
only, updates the parameters of shard r, and the updated shards are gathered so that every
replica writes the whole, identical model. Each element goes through the same arithmetic as
without sharding, so the results are the same bit for bit.

The shards live in one SyncOnRead variable per slot and group (its per-replica copies are the
shards, ONLY_FIRST_REPLICA only matters to TF's own readers, which do not see it). Each
variable's slot is a `ShardedSlot` view: saved, restored and read in its variable's full
shape under the same key as an unsharded slot, so checkpoints move between sharded and
mirrored runs and between replica counts.
"""

import dataclasses
import functools
import math
from typing import NamedTuple, Tuple

import numpy as np
import tensorflow as tf

from adam_xla import distribution
from adam_xla import slot_views


class Piece(NamedTuple):
  """Elements [start, start + size) of variable `index` (flattened) are elements
  [at, at + size) of a shard. `start` and `size` are whole rows of the variable."""

  index: int
  start: int
  at: int
  size: int


@dataclasses.dataclass(frozen=True)
class Layout:
  """Variables of `shapes` end to end (flattened), cut into `num_shards` shards at row
  boundaries (rows along the first axis), each within a row of the exact 1/N point; every
  shard is stored in `shard_size` elements (the longest shard's length)."""

  shapes: Tuple[Tuple[int, ...], ...]
  num_shards: int

  @property
  def sizes(self):
    return tuple(math.prod(shape) for shape in self.shapes)

  def row_shape(self, index):
    """The shape of one row of variable `index` (a scalar is one row of one element)."""
    return list(self.shapes[index][1:])

  @functools.cached_property
  def bounds(self):
    """Where each shard starts in the variables laid end to end, and where the last ends."""
    offsets = np.cumsum((0,) + self.sizes)
    bounds = [0]
    for shard in range(1, self.num_shards):
      point = math.ceil(shard * offsets[-1] / self.num_shards)
      index = max(int(np.searchsorted(offsets, point, side="right")) - 1, 0)
      index = min(index, len(self.sizes) - 1)
      row = math.prod(self.row_shape(index))
      point = offsets[index] + round((point - offsets[index]) / row) * row
      bounds.append(max(int(point), bounds[-1]))
    return tuple(bounds) + (int(offsets[-1]),)

  @property
  def shard_size(self):
    return max(1, max(b - a for a, b in zip(self.bounds, self.bounds[1:])))

  def pieces(self, shard):
    """The pieces of variables in `shard`, in order."""
    begin, end = self.bounds[shard], self.bounds[shard + 1]
    pieces, offset = [], 0
    for index, size in enumerate(self.sizes):
      low, high = max(begin, offset), min(end, offset + size)
      if low < high:
        pieces.append(Piece(index, low - offset, low - begin, high - low))
      offset += size
    return pieces

  def pieces_of(self, index):
    """(shard, piece) for every piece of variable `index`, in order."""
    return [(shard, piece) for shard in range(self.num_shards) for piece in self.pieces(shard)
            if piece.index == index]


class Group:
  """The sharded m and v (and vhat) of some variables of one dtype: one SyncOnRead variable per
  slot, whose copy on each local device is the shard of that device's replica."""

  def __init__(self, variables, slot_names, strategy, name):
    self.layout = Layout(tuple(tuple(v.shape.as_list()) for v in variables),
                         strategy.num_replicas_in_sync)
    self.strategy = strategy
    with distribution.creation_scope(variables[0]):
      self.shards = {
          slot: tf.Variable(
              tf.zeros([self.layout.shard_size], variables[0].dtype), trainable=False,
              name=f"{name}/{slot}", synchronization=tf.VariableSynchronization.ON_READ,
              aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA) for slot in slot_names
      }
    self.replica_ids = distribution.local_replica_ids(strategy)

  def local_shards(self, slot):
    """This worker's shards of `slot`, one variable per local device."""
    return self.strategy.experimental_local_results(self.shards[slot])

  def bytes_per_replica(self):
    return sum(self.layout.shard_size * s.dtype.size for s in self.shards.values())


class Sharded(NamedTuple):
  """What the slot table holds for a sharded variable: its group and position there."""

  group: Group
  index: int


class ShardedSlot(slot_views.SlotView):
  """One variable's slot, kept in pieces on the replicas that own them.

  Reading gathers the pieces (under MultiWorkerMirroredStrategy a collective: every worker must
  read, as every worker saves a checkpoint); assigning writes this worker's pieces only, which
  is all a restore needs, since every worker restores the same values.
  """

  def __init__(self, group, slot, index, shape):
    super().__init__(shape, group.shards[slot].dtype)
    self._group, self._slot, self._index = group, slot, index

  def read_value(self):
    group = self._group
    shards = distribution.gather_shards(group.strategy,
                                        [s.read_value() for s in group.local_shards(self._slot)],
                                        group.replica_ids)
    pieces = [shards[shard][p.at:p.at + p.size] for shard, p in group.layout.pieces_of(self._index)]
    return tf.reshape(tf.concat(pieces, 0), self._shape)

  def _write(self, flat_value):
    group = self._group
    for shard, replica in zip(group.local_shards(self._slot), group.replica_ids):
      for p in group.layout.pieces(replica):
        if p.index == self._index:
          slot_views.write_range(shard, p.at, flat_value[p.start:p.start + p.size])


# ---- The step: replicas update their shards, then exchange them ------------------------------


def step(strategy, plan, update_fn, write_fn, variables, per_variable, shared):
  """One step of sharded variables, in cross-replica context.

  `plan` is [(group, positions, indices)]: which of `variables` belong to each group, and
  where in its layout. On each device, update_fn(variables, per_variable, shared, replica)
  updates in place that replica's shard of the device's copies and the shard's state
  (`engine.update_shard`). Each replica's new rows are then read (TensorFlow slices along the
  first axis, which share the variable's buffer rather than copy it) and every device writes
  the other replicas' rows into its copies: write_fn(variables, targets, values), where
  values[i] goes to the flattened variable targets[i][0] from element targets[i][1] on
  (`engine.write_ranges`). Across workers the rows travel as one all-gathered tensor per
  group and replica.
  """
  devices = strategy.extended.worker_devices
  replica_ids = distribution.local_replica_ids(strategy)
  components = [strategy.experimental_local_results(v) for v in variables]
  local = lambda i: [c[i] for c in components]
  for i, device in enumerate(devices):
    pick = lambda x, i=i: (strategy.experimental_local_results(x)[i]
                           if isinstance(x, tf.distribute.DistributedValues) else x)
    with tf.device(device):
      update_fn(local(i), tf.nest.map_structure(pick, per_variable),
                tf.nest.map_structure(pick, shared), replica_ids[i])
  incoming = []  # (replica, position, start, rows), every group
  for group, positions, indices in plan:
    present = dict(zip(indices, positions))
    new_rows = {}  # replica -> [rows], of the variables present, in layout order
    for i, device in enumerate(devices):
      with tf.device(device):
        new_rows[replica_ids[i]] = [
            _rows(local(i)[present[p.index]], p) for p in group.layout.pieces(replica_ids[i])
            if p.index in present
        ]
    if len(devices) < strategy.num_replicas_in_sync:
      new_rows = _all_gathered(strategy, group, present, new_rows, replica_ids)
    for replica, rows in new_rows.items():
      pieces = [p for p in group.layout.pieces(replica) if p.index in present]
      incoming += [(replica, present[p.index], p.start, value) for p, value in zip(pieces, rows)]
  for i, device in enumerate(devices):
    others = [item for item in incoming if item[0] != replica_ids[i]]
    if others:
      with tf.device(device):
        write_fn(local(i), tuple((k, start) for _, k, start, _ in others),
                 [value for *_, value in others])


def _rows(var, piece):
  """Rows of `var` that `piece` covers (a TensorFlow slice, outside XLA)."""
  value = tf.convert_to_tensor(var)
  if not var.shape.rank:
    return tf.reshape(value, [1])
  row = var.shape[1:].num_elements()
  return value[piece.start // row:(piece.start + piece.size) // row]


def _all_gathered(strategy, group, present, local_pieces, replica_ids):
  """Every replica's new pieces, from this worker's: each shard as one padded 1-D tensor,
  all-gathered, cut back into pieces."""
  layout, dtype = group.layout, group.shards["m"].dtype
  shard_pieces = lambda replica: [p for p in layout.pieces(replica) if p.index in present]
  flat = []
  for replica in replica_ids:
    parts, at = [], 0
    for piece, value in zip(shard_pieces(replica), local_pieces[replica]):
      parts += [tf.zeros([piece.at - at], dtype), tf.reshape(value, [-1])]
      at = piece.at + piece.size
    parts.append(tf.zeros([layout.shard_size - at], dtype))
    flat.append(tf.concat(parts, 0))
  shards = distribution.gather_shards(strategy, flat, replica_ids)

  def rows(shard, piece):  # static shapes: the gathered tensor's length may be unknown
    row_shape = layout.row_shape(piece.index)
    return tf.reshape(shard[piece.at:piece.at + piece.size],
                      [piece.size // math.prod(row_shape)] + row_shape)

  return {
      replica: [rows(shard, p) for p in shard_pieces(replica)]
      for replica, shard in enumerate(shards)
  }
