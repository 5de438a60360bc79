"""Internal: everything in adam_xla that names `tf.distribute`.

The optimizer and the train step call these helpers and stay the same under the default
strategy, OneDeviceStrategy, MirroredStrategy, MultiWorkerMirroredStrategy and TPUStrategy:

* state (slots, the iteration count, hyperparameter variables, the step's counters) is
  created in the variable's own distribution context, so it is mirrored, placed and saved
  like the variable;
* gradients are summed over replicas (the Keras convention: the loss is expected to be scaled
  by the global batch size);
* the update runs once per device that holds a copy of the variables, on that device's
  copies of the variables and slots: off TPU as one call per device under `tf.device` (one
  XLA program per device), on TPU through `strategy.extended.update`, the route TPU
  variables require;
* the train step's compile plan, replica runs and input splitting (`compile_plan`,
  `run_and_sum`, `distribute_dataset`).
"""

import contextlib
import warnings

import keras
import tensorflow as tf


def as_tf_variable(variable):
  """The `tf.Variable` (possibly a distributed one) behind a Keras 3 variable."""
  return variable.value if isinstance(variable, keras.Variable) else variable


def strategy_or_active(strategy=None):
  """`strategy`, else the one in scope (the default strategy outside any scope)."""
  return strategy if strategy is not None else tf.distribute.get_strategy()


@contextlib.contextmanager
def creation_scope(variable=None, strategy=None):
  """Creates variables eagerly, placed and replicated like `variable`, else in `strategy`'s
  scope (default: the active strategy)."""
  strategy = strategy or strategy_or_active(getattr(variable, "distribute_strategy", None))
  with tf.init_scope(), strategy.scope():
    if variable is None:
      yield
    else:
      with strategy.extended.colocate_vars_with(variable):
        yield


def check_created_in_scope(variable):
  """Raises if a strategy is active but `variable` was created outside its scope."""
  strategy = tf.distribute.get_strategy()
  if tf.distribute.has_strategy() and not strategy.extended.variable_created_in_scope(variable):
    raise ValueError(
        f"Adam: variable '{variable.name}' was not created under the active distribution "
        "strategy's scope; create the model (and its variables) inside `strategy.scope()`.")


def in_cross_replica_context(fn, *args):
  """Calls fn(strategy, *args) in cross-replica context (via merge_call from a replica)."""
  if tf.distribute.in_cross_replica_context():
    return fn(tf.distribute.get_strategy(), *args)
  return tf.distribute.get_replica_context().merge_call(fn, args=args)


def sum_over_replicas(grads):
  """Sums gradients over replicas when called in the replica context of a multi-replica run."""
  replica_context = tf.distribute.get_replica_context()
  if replica_context is None or replica_context.num_replicas_in_sync == 1:
    return grads
  return replica_context.all_reduce(tf.distribute.ReduceOp.SUM, grads)


def first_local_value(strategy, value):
  """The first of this worker's per-device components of `value` (`value` if it is plain)."""
  return strategy.experimental_local_results(value)[0]


def step_variable(initial_value, dtype, name):
  """A non-trainable piece of step state whose value is the same on every replica (a
  counter, the loss scale), written by the first replica only. Create it in a
  `creation_scope`."""
  return tf.Variable(initial_value, dtype=dtype, trainable=False, name=name,
                     aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)


def _is_tpu(strategy):
  return isinstance(strategy, (tf.distribute.TPUStrategy, tf.distribute.experimental.TPUStrategy))


def update_on_each_device(strategy, update_fn, variables, per_variable, shared):
  """Runs update_fn(variables, per_variable, shared) once per device, on its local copies.

  Call in cross-replica context. `per_variable` is a structure of lists parallel to
  `variables`, and `shared` any structure (the step's scalars); their leaves may be
  distributed values (per-replica gradients, mirrored slots): each device gets its own
  component. Under MirroredStrategy and MultiWorkerMirroredStrategy this makes the update of
  all variables one call, and one XLA program, per device, under `tf.device`. On TPU the
  replica function is compiled as a whole anyway, so each variable goes through
  `strategy.extended.update`, the route TPU variables require.
  """
  if _is_tpu(strategy):
    for i, variable in enumerate(variables):
      own = tf.nest.map_structure(lambda leaves: leaves[i], per_variable,
                                  is_leaf=lambda x: isinstance(x, list))
      strategy.extended.update(
          variable, lambda v, own, shared: update_fn([v], tuple([x] for x in own), shared),
          args=(own, shared), group=False)
    return
  devices = _local_devices(strategy)
  if devices is None:
    update_fn(variables, per_variable, shared)
    return
  components = [strategy.experimental_local_results(v) for v in variables]
  for index, device in enumerate(devices):
    pick = lambda x: (strategy.experimental_local_results(x)[index]
                      if isinstance(x, tf.distribute.DistributedValues) else x)
    with tf.device(device):
      update_fn([c[index] for c in components], tf.nest.map_structure(pick, per_variable),
                tf.nest.map_structure(pick, shared))


def shards_state(strategy):
  """Whether `Adam(shard_state=True)` splits the state under `strategy`: under
  MirroredStrategy and MultiWorkerMirroredStrategy with more than one replica. (On TPU the
  compiler shards the weight update itself; on one device there is nothing to split.)"""
  return (isinstance(
      strategy, (tf.distribute.MirroredStrategy, tf.distribute.MultiWorkerMirroredStrategy)) and
          strategy.num_replicas_in_sync > 1)


def local_replica_ids(strategy):
  """The replica id in the sync group of each of this worker's devices, in device order."""
  ids = strategy.experimental_distribute_values_from_function(
      lambda context: context.replica_id_in_sync_group)
  return tuple(int(i) for i in strategy.experimental_local_results(ids))


def gather_shards(strategy, local_shards, replica_ids):
  """Every replica's shard, in replica order, from this worker's `local_shards` (one per
  local device, of replicas `replica_ids`). On one worker they are all here; across workers
  it is an all-gather, which every worker must call."""
  count = strategy.num_replicas_in_sync
  if len(local_shards) == count:
    by_id = dict(zip(replica_ids, local_shards))
    return [by_id[i] for i in range(count)]
  by_id = dict(zip(replica_ids, local_shards))
  per_replica = strategy.experimental_distribute_values_from_function(
      lambda context: by_id[context.replica_id_in_sync_group])
  return tf.split(strategy.gather(per_replica, axis=0), count)


# ---- Compile plans for the train step ------------------------------------------------------

SINGLE_PROGRAM = "single_program"
REPLICA_PROGRAMS = "replica_programs"
TPU_PROGRAM = "tpu_program"

PLAN_DESCRIPTIONS = {
    SINGLE_PROGRAM: "forward, backward and Adam update of every variable in one XLA program",
    REPLICA_PROGRAMS: ("per replica: forward and backward as one XLA program, gradients "
                       "all-reduced outside XLA, then the Adam update of all variables as "
                       "one XLA program per device"),
    TPU_PROGRAM: "the whole replica step, cross-replica sums included, compiled by TPU XLA",
}


def compile_plan(strategy):
  """The largest XLA programs `strategy` allows for a train step (see PLAN_DESCRIPTIONS).

  Under MirroredStrategy and MultiWorkerMirroredStrategy a compiled function that reads
  mirrored variables and all-reduces fails ("Trying to access resource ... located in device
  CPU:1 from device CPU:0"), so the all-reduce stays outside the compiled pieces there.
  """
  if _is_tpu(strategy):
    return TPU_PROGRAM
  if isinstance(strategy,
                (tf.distribute.MirroredStrategy, tf.distribute.MultiWorkerMirroredStrategy)):
    return REPLICA_PROGRAMS
  return SINGLE_PROGRAM


def program_device(strategy):
  """Where a single-program step must run: its strategy's one device (None: the default)."""
  devices = _local_devices(strategy)
  return devices[0] if devices and len(devices) == 1 else None


def _local_devices(strategy):
  """This worker's devices of `strategy`; None for the default (no) strategy, which has none."""
  try:
    return strategy.extended.worker_devices
  except RuntimeError:
    return None


def run_and_sum(strategy, fn, args):
  """strategy.run(fn, args), with its structure of per-replica scalars summed into tensors."""
  per_replica = strategy.run(fn, args=args)
  return tf.nest.map_structure(
      lambda value: strategy.reduce(tf.distribute.ReduceOp.SUM, value, axis=None), per_replica)


def replicas_in_sync():
  """The number of replicas taking part in the step being traced (1 outside a strategy)."""
  return tf.distribute.get_replica_context().num_replicas_in_sync


def is_iterator(data):
  """Whether `data` is an iterator over (possibly distributed) batches."""
  return isinstance(data, (tf.data.Iterator, tf.distribute.DistributedIterator))


def distribute_dataset(strategy, dataset):
  """Splits each global batch of `dataset` across the replicas (per host on multi-worker).

  Warns unless the batch dimension is fixed: a last, smaller batch would trace and compile a
  second program, and under several replicas would not split evenly.
  """
  batch_dim = tf.nest.flatten(dataset.element_spec)[0].shape[:1]
  if batch_dim.rank and batch_dim[0] is None:
    warnings.warn(
        "TrainStep.distribute: the batch dimension is not fixed; batch with "
        "drop_remainder=True so that a partial last batch does not recompile.", stacklevel=3)
  return strategy.experimental_distribute_dataset(dataset)
