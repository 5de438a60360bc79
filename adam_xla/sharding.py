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
import math
from typing import NamedTuple, Tuple

import tensorflow as tf

from adam_xla import distribution
from adam_xla import slot_views


class Piece(NamedTuple):
  """Elements [start, start + size) of variable `index` (flattened) are elements
  [at, at + size) of a shard."""

  index: int
  start: int
  at: int
  size: int


@dataclasses.dataclass(frozen=True)
class Layout:
  """Variables of `sizes` elements end to end, in `num_shards` shards of `shard_size`."""

  sizes: Tuple[int, ...]
  num_shards: int

  @property
  def total(self):
    return sum(self.sizes)

  @property
  def shard_size(self):
    return math.ceil(self.total / self.num_shards)

  def pieces(self, shard):
    """The pieces of variables in `shard`, in order."""
    begin, end = shard * self.shard_size, min((shard + 1) * self.shard_size, self.total)
    pieces, offset = [], 0
    for index, size in enumerate(self.sizes):
      low, high = max(begin, offset), min(end, offset + size)
      if low < high:
        pieces.append(Piece(index, low - offset, low - begin, high - low))
      offset += size
    return pieces

  def pieces_of(self, index):
    """(shard, piece) for every piece of variable `index`, in order."""
    return [(shard, piece) for shard in range(self.num_shards)
            for piece in self.pieces(shard) if piece.index == index]


class Group:
  """The sharded m and v (and vhat) of some variables of one dtype: one SyncOnRead variable per
  slot, whose copy on each local device is the shard of that device's replica."""

  def __init__(self, variables, slot_names, strategy, name):
    self.layout = Layout(tuple(v.shape.num_elements() for v in variables), 
                         strategy.num_replicas_in_sync)
    self.strategy = strategy
    with distribution.creation_scope(variables[0]):
      self.shards = {
          slot: tf.Variable(tf.zeros([self.layout.shard_size], variables[0].dtype),
                            trainable=False, name=f"{name}/{slot}",
                            synchronization=tf.VariableSynchronization.ON_READ,
                            aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)
          for slot in slot_names}
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
    shards = distribution.gather_shards(
        group.strategy, [s.read_value() for s in group.local_shards(self._slot)],
        group.replica_ids)
    pieces = [shards[shard][p.at:p.at + p.size]
              for shard, p in group.layout.pieces_of(self._index)]
    return tf.reshape(tf.concat(pieces, 0), self._shape)

  def _write(self, flat_value):
    group = self._group
    for shard, replica in zip(group.local_shards(self._slot), group.replica_ids):
      for p in group.layout.pieces(replica):
        if p.index == self._index:
          slot_views.write_range(shard, p.at, flat_value[p.start:p.start + p.size])
