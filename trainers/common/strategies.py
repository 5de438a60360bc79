"""Everything the trainers and tools do with `tf.distribute`, in one place.

adam_xla takes a strategy and stays the same under any of them; which strategy a run uses,
which process owns the model directory, how the workers agree to stop and how evaluation
results come back from the replicas are the trainers' business, and live here:

* `split_cpu` and `create_strategy`: the devices and the strategy a --strategy flag names;
* `worker_index`, `num_workers` and `any_worker`: who writes, which share of the
  input a worker reads, and stopping together;
* `on_replicas` and `local_values`: a function run on every replica, its results summed or
  brought to this host.
"""

import numpy as np
import tensorflow as tf

from trainers.common import config


def split_cpu(num_logical_cpus):
  """Splits the first CPU into logical devices (must run before TensorFlow starts).

  Gives MirroredStrategy real replicas on a machine without accelerators.
  """
  cpu = tf.config.list_physical_devices("CPU")[0]
  tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] *
                                             num_logical_cpus)


def create_strategy(kind, *, tpu=None):
  """The strategy a trainer's --strategy flag names; see `config.STRATEGIES`.

  "mirrored" uses every local GPU, or every logical CPU when there are no GPUs;
  "multi_worker" reads the cluster from the TF_CONFIG environment variable; "tpu" resolves
  `tpu` (a Cloud TPU name, a grpc:// address, or "local" on a TPU VM) and initializes the TPU
  system, as the TPU guide describes.
  """
  if kind not in config.STRATEGIES:
    raise ValueError(f"unknown strategy {kind!r}; accepted: {', '.join(config.STRATEGIES)}.")
  if kind == "default":
    return tf.distribute.get_strategy()
  if kind == "one_device":
    gpus = tf.config.list_logical_devices("GPU")
    return tf.distribute.OneDeviceStrategy((gpus or tf.config.list_logical_devices("CPU"))[0].name)
  if kind == "mirrored":
    devices = tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("CPU")
    return tf.distribute.MirroredStrategy([d.name for d in devices])
  if kind == "multi_worker":
    return tf.distribute.MultiWorkerMirroredStrategy()
  if not tpu:
    raise ValueError("the tpu strategy needs a TPU: a Cloud TPU name, a grpc:// address, "
                     "or 'local' on a TPU VM.")
  resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=tpu)
  if tpu != "local":
    tf.config.experimental_connect_to_cluster(resolver)
  tf.tpu.experimental.initialize_tpu_system(resolver)
  return tf.distribute.TPUStrategy(resolver)


def worker_index(strategy):
  """This process's place among the workers, numbered as TensorFlow does to split the input: a
  chief task first, then the workers. Worker 0 (the chief, or worker 0 when there is no
  chief) owns model_dir."""
  resolver = strategy.cluster_resolver
  if resolver is None or not resolver.task_type:
    return 0
  has_chief = "chief" in resolver.cluster_spec().as_dict()
  if resolver.task_type == "chief":
    return 0
  return resolver.task_id + (1 if has_chief else 0)


def num_workers(strategy):
  """How many processes run the steps together: 1 unless a multi-worker strategy spans more.

  Every worker of a MultiWorkerMirroredStrategy holds the same replicas (its
  `worker_devices`), so the replicas in sync over this process's replicas counts the
  workers. A TPUStrategy's one client holds every core: 1. Strategies without a cluster
  resolver are local.
  """
  if strategy.cluster_resolver is None:
    return 1
  return max(1, strategy.num_replicas_in_sync // len(strategy.extended.worker_devices))


def any_worker(strategy):
  """`agree` for `training_loop.run` under `strategy`: True when the flag is set on any worker.

  One tiny all-reduce per call of the train step, only when there are several workers.
  """
  if num_workers(strategy) <= 1:
    return bool
  count = on_replicas(strategy, lambda flag: tf.cast(flag, tf.int32), summed=True)
  return lambda flag: int(count(tf.constant(flag)).numpy()) > 0


def on_replicas(strategy, replica_fn, *, summed=False):
  """A compiled fn(*args) running `replica_fn(*args)` on every replica of `strategy`.

  It returns the replicas' values as per-replica values (see `local_values`), or with
  `summed` each value of the structure summed over all replicas of all workers (scalars, such
  as counts over a batch), as plain tensors. The function is traced once per input
  signature, so call it with batches of one shape.
  """

  @tf.function
  def run(*args):
    per_replica = strategy.run(replica_fn, args=args)
    if not summed:
      return per_replica
    return tf.nest.map_structure(
        lambda value: strategy.reduce(tf.distribute.ReduceOp.SUM, value, axis=None), per_replica)

  return run


def local_values(strategy, per_replica):
  """A structure of per-replica tensors -> NumPy arrays, this process's replicas concatenated
  along the first axis in replica order (the order of the examples of a distributed batch);
  a scalar gives one value per replica."""
  return tf.nest.map_structure(
      lambda value: np.concatenate(
          [np.atleast_1d(v.numpy()) for v in strategy.experimental_local_results(value)]),
      per_replica)
