"""The training input under any strategy, with its position saved in checkpoints.

A preempted run must continue its data where it stopped, not see the first batches of its
epoch again. tf.data saves the position of a plain iterator (shuffle buffers included), but
not of the distributed iterators `tf.distribute` makes. So this module builds the distributed
input from plain ones: each host runs one input pipeline (as
`distribute_datasets_from_function` does: the dataset function gets the host's
`tf.distribute.InputContext` and returns per-replica batches), iterated by a plain iterator
on the host's CPU, and each step hands that iterator's next batches to the host's replicas
in replica order. The batches are those `distribute_datasets_from_function` would give; what
is lost is its prefetching onto the accelerators (the copy happens in the step instead).

Under several workers (MultiWorkerMirroredStrategy) each worker's position is its own: the
training loop saves it per worker (see `training_loop.run`'s `per_worker`).
"""

from typing import Callable

import tensorflow as tf

from trainers.common import strategies


def iterate(strategy, dataset_fn: Callable[[tf.distribute.InputContext], tf.data.Dataset]):
  """An iterator over the training input of `strategy` that a `tf.train.Checkpoint` can save.

  Without a strategy it is the dataset's own iterator (saved as before under the key
  "data_position"); otherwise a `HostIterators`, which a step built by
  `adam_xla.make_train_step` takes like the iterator of a distributed dataset.
  """
  with strategy.scope():
    if not tf.distribute.has_strategy():
      return iter(dataset_fn(tf.distribute.InputContext()))
  return HostIterators(strategy, dataset_fn)


def _host_of(device):
  """The CPU of the host that holds `device` (a device name)."""
  spec = tf.DeviceSpec.from_string(device)
  return spec.replace(device_type="CPU", device_index=0).to_string()


class HostIterators(tf.distribute.DistributedIterator, tf.__internal__.tracking.AutoTrackable):
  """One plain, checkpointable tf.data iterator per host of this process, feeding its replicas.

  The replicas of this process are `strategy.extended.worker_devices`, in replica order;
  those on one host take consecutive batches of that host's pipeline. Pipelines are numbered
  over all workers (this worker's hosts follow those of the workers before it), so with
  several workers each reads its own share of the files.
  """

  def __init__(self, strategy, dataset_fn):
    self._strategy = strategy
    devices = list(strategy.extended.worker_devices)
    hosts = list(dict.fromkeys(_host_of(d) for d in devices))
    workers = strategies.num_workers(strategy)
    first_pipeline = strategies.worker_index(strategy) * len(hosts)
    self._first_replica = strategies.worker_index(strategy) * len(devices)
    # replica (local index) -> (host, place among that host's replicas)
    slots = []
    for device in devices:
      host = hosts.index(_host_of(device))
      slots.append((host, sum(1 for h, _ in slots if h == host)))
    self._slots = tuple(slots)
    self._per_host = tuple(sum(1 for h, _ in slots if h == host) for host in range(len(hosts)))
    iterators = []
    for index, host in enumerate(hosts):
      context = tf.distribute.InputContext(num_input_pipelines=workers * len(hosts),
                                           input_pipeline_id=first_pipeline + index,
                                           num_replicas_in_sync=strategy.num_replicas_in_sync)
      with tf.device(host):
        iterators.append(iter(dataset_fn(context)))
    self.iterators = iterators  # tracked: the checkpointed position, one entry per host

  def __iter__(self):
    return self

  def __next__(self):
    return self.get_next()

  def get_next(self):
    """The next batch of every replica, as a per-replica value of the strategy."""
    batches = [[next(iterator) for _ in range(count)]
               for iterator, count in zip(self.iterators, self._per_host)]
    local = [batches[host][place] for host, place in self._slots]
    return self._strategy.experimental_distribute_values_from_function(
        lambda context: local[context.replica_id_in_sync_group - self._first_replica])

  def get_next_as_optional(self):
    raise NotImplementedError("HostIterators: the training input repeats; use next().")

  @property
  def element_spec(self):
    return self.iterators[0].element_spec
