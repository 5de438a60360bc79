"""Everything in adam_xla that names `tf.distribute`.

The optimizer calls these helpers and stays the same under the default strategy,
OneDeviceStrategy, MirroredStrategy, MultiWorkerMirroredStrategy and TPUStrategy:

* state (slots, the iteration count, hyperparameter variables) is created in the variable's
  own distribution context, so it is mirrored, placed and saved like the variable;
* gradients are summed over replicas (the Keras convention: the loss is expected to be scaled
  by the global batch size);
* each variable is updated through `strategy.extended.update`, which runs the update on
  every device that holds a copy, with that device's copy of the slots.
"""

import contextlib

import keras
import tensorflow as tf


def as_tf_variable(variable):
  """The `tf.Variable` (possibly a distributed one) behind a Keras 3 variable."""
  return variable.value if isinstance(variable, keras.Variable) else variable


def _strategy_of(variable):
  strategy = getattr(variable, "distribute_strategy", None)
  return strategy if strategy is not None else tf.distribute.get_strategy()


@contextlib.contextmanager
def creation_scope(variable=None):
  """Creates variables eagerly, placed and replicated like `variable` (or the active strategy)."""
  strategy = _strategy_of(variable)
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


def local_values(strategy, value):
  """This worker's per-device components of `value` (a 1-tuple for a plain value)."""
  return strategy.experimental_local_results(value)


def _is_tpu(strategy):
  return isinstance(strategy, (tf.distribute.TPUStrategy, tf.distribute.experimental.TPUStrategy))


def update_on_each_device(strategy, update_fn, variables, per_variable, shared):
  """Runs update_fn(variables, per_variable, shared) once per device, on its local copies.

  `per_variable` is a structure of lists parallel to `variables` whose leaves may be
  distributed values (per-replica gradients, mirrored slots): each device gets its own
  component. `shared` (per-step scalars) is passed as it is. Under MirroredStrategy and
  MultiWorkerMirroredStrategy this makes the update of all variables one call, and one XLA
  program, per device. On TPU the replica function is compiled as a whole anyway, so each
  variable goes through `strategy.extended.update`, the route TPU variables require.
  """
  if _is_tpu(strategy):
    for i, variable in enumerate(variables):
      own = tf.nest.map_structure(lambda leaves: leaves[i], per_variable,
                                  is_leaf=lambda x: isinstance(x, list))
      strategy.extended.update(
          variable, lambda v, *args: update_fn([v], _listify(args), shared),
          args=tuple(own), group=False)
    return
  devices = _local_devices(strategy)
  if devices is None:
    update_fn(variables, per_variable, shared)
    return
  components = [local_values(strategy, v) for v in variables]
  for index, device in enumerate(devices):
    pick = lambda x: (local_values(strategy, x)[index]
                      if isinstance(x, tf.distribute.DistributedValues) else x)
    with tf.device(device):
      update_fn([c[index] for c in components], tf.nest.map_structure(pick, per_variable),
                shared)


def _listify(args):
  return tuple([arg] for arg in args)


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
  if isinstance(strategy, (tf.distribute.MirroredStrategy,
                           tf.distribute.MultiWorkerMirroredStrategy)):
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


def run_on_replicas(strategy, fn, args):
  """strategy.run, returning per-replica results."""
  return strategy.run(fn, args=args)


def sum_replica_results(strategy, per_replica):
  """Sums a structure of per-replica scalars into plain tensors."""
  return tf.nest.map_structure(
      lambda value: strategy.reduce(tf.distribute.ReduceOp.SUM, value, axis=None),
      per_replica)


def num_replicas(strategy):
  return strategy.num_replicas_in_sync


def distribute_dataset(strategy, dataset):
  """Splits each global batch of `dataset` across the replicas (per host on multi-worker)."""
  return strategy.experimental_distribute_dataset(dataset)


# ---- Creating a strategy ---------------------------------------------------------------------

STRATEGY_KINDS = ("default", "one_device", "mirrored", "multi_worker", "tpu")


def split_cpu(num_logical_cpus):
  """Splits the first CPU into logical devices (must run before TensorFlow starts).

  Gives MirroredStrategy real replicas on a machine without accelerators.
  """
  cpu = tf.config.list_physical_devices("CPU")[0]
  tf.config.set_logical_device_configuration(
      cpu, [tf.config.LogicalDeviceConfiguration()] * num_logical_cpus)


def create_strategy(kind, *, tpu=None):
  """The strategy a trainer's --strategy flag names; see STRATEGY_KINDS.

  "mirrored" uses every local GPU, or every logical CPU when there are no GPUs;
  "multi_worker" reads the cluster from the TF_CONFIG environment variable; "tpu" resolves
  `tpu` (a Cloud TPU name, a grpc:// address, or "local" on a TPU VM) and initializes the TPU
  system, as the TPU guide describes.
  """
  if kind not in STRATEGY_KINDS:
    raise ValueError(f"unknown strategy {kind!r}; accepted: {', '.join(STRATEGY_KINDS)}.")
  if kind == "default":
    return tf.distribute.get_strategy()
  if kind == "one_device":
    gpus = tf.config.list_logical_devices("GPU")
    return tf.distribute.OneDeviceStrategy((gpus or tf.config.list_logical_devices("CPU"))[0]
                                           .name)
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
