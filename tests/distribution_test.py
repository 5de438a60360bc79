"""Tests for adam_xla/distribution.py and adam_xla.Adam under a 2-replica MirroredStrategy.

The one physical CPU is split into two logical devices before any TF op runs, so that
MirroredStrategy has two replicas on this machine. Training under the strategy (each replica
taking half of a fixed global batch, the loss scaled by the global batch size) must leave
both replicas' copies bit-identical and equal to one device training on the whole batch.
"""

import numpy as np
import pytest
import tensorflow as tf

from tests import logical_cpus

logical_cpus.require(2)  # before anything starts the TF runtime

# pylint: disable=g-direct-tensorflow-import,wrong-import-position
from tensorflow.python.distribute import values as values_lib

import adam_xla
from adam_xla import distribution
from adam_xla import slots
from tests import numpy_adam
from tests import pytest_main

STRATEGY = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
GLOBAL_BATCH = 8
HALF = GLOBAL_BATCH // 2
STEPS = 20


def assert_mirrored(variable, num_replicas=2):
  """A mirrored variable, or a packed slot (a range of a mirrored buffer), with one copy on
  each device."""
  held = variable.buffer if isinstance(variable, slots.PackedSlot) else variable
  assert isinstance(held, values_lib.MirroredVariable), type(variable)
  assert len(variable.values) == num_replicas
  devices = {tf.DeviceSpec.from_string(v.device).device_index for v in variable.values}
  assert devices == {0, 1}


def assert_replicas_identical(variable, name):
  np.testing.assert_array_equal(variable.values[0].numpy(), variable.values[1].numpy(),
                                err_msg=f"replicas differ: {name}")


def split_per_replica(array):
  """A PerReplica value: replica i gets rows [i * HALF, (i + 1) * HALF) of `array`."""
  return STRATEGY.experimental_distribute_values_from_function(lambda ctx: tf.constant(array[
      ctx.replica_id_in_sync_group * HALF:(ctx.replica_id_in_sync_group + 1) * HALF]))


# ---- (a) state placement --------------------------------------------------------------


@pytest.mark.parametrize("build_in_scope", [False, True])
@pytest.mark.parametrize("amsgrad", [False, True])
def test_build_creates_mirrored_slots_and_iterations(build_in_scope, amsgrad):
  with STRATEGY.scope():
    w = tf.Variable(tf.ones((3, 2)))
    b = tf.Variable(tf.zeros((2,), tf.float64))
  assert_mirrored(w)
  opt = adam_xla.Adam(learning_rate=0.01, amsgrad=amsgrad)
  if build_in_scope:
    with STRATEGY.scope():
      opt.build([w, b])
  else:
    opt.build([w, b])
  for var in (w, b):
    for slot_name in opt.slot_names:
      slot = opt.slot(var, slot_name)
      assert_mirrored(slot)
      assert slot.shape == var.shape
      assert slot.dtype == var.dtype
      for component in slot.values:
        np.testing.assert_array_equal(component.numpy(), np.zeros(var.shape))
      # Each copy of the slot sits on the device of the matching copy of the variable.
      for slot_copy, var_copy in zip(slot.values, var.values):
        assert (tf.DeviceSpec.from_string(
            slot_copy.device).device_index == tf.DeviceSpec.from_string(
                var_copy.device).device_index)
  assert opt.slot_names == (("m", "v", "vhat") if amsgrad else ("m", "v"))
  assert_mirrored(opt.iterations)
  assert opt.iterations.dtype == tf.int64
  assert [int(c.numpy()) for c in opt.iterations.values] == [0, 0]
  assert_mirrored(opt.learning_rate)


def test_build_rejects_variable_created_outside_scope():
  outside = tf.Variable(tf.ones(3))
  opt = adam_xla.Adam()
  with STRATEGY.scope():
    with pytest.raises(ValueError, match="strategy.scope"):
      opt.build([outside])


# ---- (b), (c) training under the strategy equals training on one device ------------------

RNG = np.random.default_rng(1234)
X = RNG.normal(size=(GLOBAL_BATCH, 3)).astype(np.float32)
Y = (X @ np.array([1.5, -2.0, 0.5]) + 0.3 + 0.1 * RNG.normal(size=GLOBAL_BATCH)).astype(np.float32)
W0 = np.array([0.2, 0.1, -0.3], np.float32)
B0 = np.array([-0.5], np.float32)
LEARNING_RATE = 0.05


def linear_loss(variables, x, y):
  """Sum of per-example squared errors over the examples given, / the global batch size."""
  w, b = variables
  prediction = tf.linalg.matvec(x, w) + b
  return tf.reduce_sum(tf.square(prediction - y)) / GLOBAL_BATCH


def np_linear_grads(w, b):
  residual = X.astype(np.float64) @ w + b - Y
  return [2.0 * X.T @ residual / GLOBAL_BATCH, np.array([2.0 * residual.sum() / GLOBAL_BATCH])]


def train_mirrored(make_variables, loss_fn, batches, opt_kwargs):
  """Trains under STRATEGY; batches[step] is a tuple of global-batch arrays."""
  with STRATEGY.scope():
    variables = make_variables()
  opt = adam_xla.Adam(learning_rate=LEARNING_RATE, **opt_kwargs)

  @tf.function
  def train_step(*inputs):

    def replica_fn(*local_inputs):
      with tf.GradientTape() as tape:
        loss = loss_fn(variables, *local_inputs)
      grads = tape.gradient(loss, variables)
      opt.apply_gradients(zip(grads, variables))

    STRATEGY.run(replica_fn, args=inputs)

  for step, batch in enumerate(batches):
    train_step(*[split_per_replica(a) for a in batch])
    if step == 0:
      # The first call creates the optimizer's state (which makes tf.function trace twice);
      # later steps must reuse the traced program.
      traces = train_step.experimental_get_tracing_count()
  assert train_step.experimental_get_tracing_count() == traces
  return variables, opt


def train_single(make_variables, loss_fn, batches, opt_kwargs):
  variables = make_variables()
  opt = adam_xla.Adam(learning_rate=LEARNING_RATE, **opt_kwargs)

  @tf.function
  def train_step(*inputs):
    with tf.GradientTape() as tape:
      loss = loss_fn(variables, *inputs)
    grads = tape.gradient(loss, variables)
    opt.apply_gradients(zip(grads, variables))

  for batch in batches:
    train_step(*[tf.constant(a) for a in batch])
  return variables, opt


def check_mirrored_equals_single(mirrored, single, slot_names):
  (m_vars, m_opt), (s_vars, s_opt) = mirrored, single
  assert [int(c.numpy()) for c in m_opt.iterations.values] == [STEPS, STEPS]
  assert int(s_opt.iterations.numpy()) == STEPS
  for i, (m_var, s_var) in enumerate(zip(m_vars, s_vars)):
    pairs = [(f"var{i}", m_var, s_var)] + [
        (f"var{i}/{name}", m_opt.slot(m_var, name), s_opt.slot(s_var, name)) for name in slot_names
    ]
    for label, m, s in pairs:
      assert_mirrored(m)
      assert_replicas_identical(m, label)
      np.testing.assert_allclose(m.values[0].numpy(), s.numpy(), rtol=1e-5, atol=1e-7,
                                 err_msg=label)


DENSE_CONFIGS = {
    "default": dict(),
    "amsgrad_clipnorm": dict(amsgrad=True, clipnorm=0.5),
    "global_clipnorm": dict(global_clipnorm=0.5),
}


@pytest.mark.parametrize("config", sorted(DENSE_CONFIGS))
def test_dense_model_mirrored_equals_single_device(config):
  opt_kwargs = DENSE_CONFIGS[config]
  # The clip thresholds are below the first step's gradient norms, so clipping is active.
  first = np_linear_grads(W0.astype(np.float64), B0.astype(np.float64))
  assert all(np.linalg.norm(g) > 0.5 for g in first)

  make_variables = lambda: [tf.Variable(W0), tf.Variable(B0)]
  batches = [(X, Y)] * STEPS
  mirrored = train_mirrored(make_variables, linear_loss, batches, opt_kwargs)
  single = train_single(make_variables, linear_loss, batches, opt_kwargs)
  slot_names = ("m", "v", "vhat") if opt_kwargs.get("amsgrad") else ("m", "v")
  check_mirrored_equals_single(mirrored, single, slot_names)

  # Both also follow the float64 NumPy reference of the documented formula.
  params = [W0.astype(np.float64), B0.astype(np.float64)]
  reference = numpy_adam.NumpyAdam(learning_rate=LEARNING_RATE, **opt_kwargs)
  for _ in range(STEPS):
    reference.step(params, np_linear_grads(*params))
  for m_var, want in zip(mirrored[0], params):
    np.testing.assert_allclose(m_var.values[0].numpy(), want, rtol=1e-4, atol=1e-5)
  # And training did move the weights.
  assert np.abs(params[0] - W0).max() > 0.1


NUM_ROWS, DIM, IDS_PER_EXAMPLE = 30, 4, 3
TABLE0 = (0.1 * RNG.normal(size=(NUM_ROWS, DIM))).astype(np.float32)
W_EMB0 = RNG.normal(size=(DIM,)).astype(np.float32)
Y_EMB = RNG.normal(size=(GLOBAL_BATCH,)).astype(np.float32)


def embedding_batches():
  rng = np.random.default_rng(99)
  batches = []
  for _ in range(STEPS):
    ids = rng.integers(0, NUM_ROWS, size=(GLOBAL_BATCH, IDS_PER_EXAMPLE)).astype(np.int32)
    ids[0, 1] = ids[0, 0]  # a duplicate within replica 0
    ids[HALF, 2] = ids[0, 0]  # and the same row again on replica 1
    batches.append((ids, Y_EMB))
  return batches


def embedding_loss(variables, ids, y):
  table, w = variables
  pooled = tf.reduce_sum(tf.gather(table, ids), axis=1)
  prediction = tf.linalg.matvec(pooled, w)
  return tf.reduce_sum(tf.square(prediction - y)) / GLOBAL_BATCH


@pytest.mark.parametrize("sparse_mode", ["dense", "lazy"])
def test_embedding_mirrored_equals_single_device(sparse_mode):
  make_variables = lambda: [tf.Variable(TABLE0), tf.Variable(W_EMB0)]
  batches = embedding_batches()
  # The table's gradient is sparse, so this exercises the IndexedSlices path.
  variables = make_variables()
  with tf.GradientTape() as tape:
    loss = embedding_loss(variables, *batches[0])
  assert isinstance(tape.gradient(loss, variables[0]), tf.IndexedSlices)

  opt_kwargs = dict(sparse_mode=sparse_mode, amsgrad=True)
  mirrored = train_mirrored(make_variables, embedding_loss, batches, opt_kwargs)
  single = train_single(make_variables, embedding_loss, batches, opt_kwargs)
  check_mirrored_equals_single(mirrored, single, ("m", "v", "vhat"))

  table = mirrored[0][0].values[0].numpy()
  touched = np.unique(np.concatenate([ids.ravel() for ids, _ in batches]))
  untouched = np.setdiff1d(np.arange(NUM_ROWS), touched)
  # Rows never looked up keep their initial value in both modes; the others moved.
  np.testing.assert_array_equal(table[untouched], TABLE0[untouched])
  assert np.all(np.abs(table[touched] - TABLE0[touched]).max(axis=1) > 0)
  # The mode is honoured: in lazy mode a row moves only on the steps that look it up; the
  # dense update keeps moving every row looked up before (its m decays but is not zero).
  # So rows absent from the last batch are unchanged by the last step exactly when lazy
  # (compared on one device, where both runs sum in the same order).
  last_ids = np.unique(batches[-1][0])
  absent = np.setdiff1d(touched, last_ids)
  assert absent.size > 0
  before = train_single(make_variables, embedding_loss, batches[:-1], opt_kwargs)[0][0]
  after = single[0][0]
  unchanged = np.all(after.numpy()[absent] == before.numpy()[absent], axis=1)
  if sparse_mode == "lazy":
    assert np.all(unchanged)
  else:
    assert not np.any(unchanged)


# ---- (d) check_created_in_scope ---------------------------------------------------------


def test_check_created_in_scope():
  outside = tf.Variable(1.0, name="made_outside")
  with STRATEGY.scope():
    inside = tf.Variable(1.0)
    with pytest.raises(ValueError, match="made_outside"):
      distribution.check_created_in_scope(outside)
    distribution.check_created_in_scope(inside)  # no error
  # Without an active strategy nothing is checked.
  distribution.check_created_in_scope(outside)
  distribution.check_created_in_scope(inside)


# ---- (e) sum_over_replicas --------------------------------------------------------------


def test_sum_over_replicas_outside_replica_context_is_identity():
  grads = [tf.constant([1.0, 2.0]), tf.constant(3.0)]
  # Default strategy (one replica) and the cross-replica context of the 2-replica strategy.
  assert distribution.sum_over_replicas(grads) is grads
  with STRATEGY.scope():
    assert tf.distribute.in_cross_replica_context()
    assert distribution.sum_over_replicas(grads) is grads


def test_sum_over_replicas_sums_inside_strategy_run():
  per_replica = STRATEGY.experimental_distribute_values_from_function(
      lambda ctx: tf.constant([1.0, 10.0]) * (ctx.replica_id_in_sync_group + 1))
  sparse_values = STRATEGY.experimental_distribute_values_from_function(
      lambda ctx: tf.constant([[1.0, 2.0]]) * (ctx.replica_id_in_sync_group + 1))
  sparse_indices = STRATEGY.experimental_distribute_values_from_function(
      lambda ctx: tf.constant([ctx.replica_id_in_sync_group * 2], tf.int64))

  @tf.function
  def run():

    def replica_fn(dense, values, indices):
      summed_dense, summed_sparse = distribution.sum_over_replicas([
          dense, tf.IndexedSlices(values, indices, tf.constant([3, 2], tf.int64))
      ])
      return summed_dense, tf.convert_to_tensor(summed_sparse)

    return STRATEGY.run(replica_fn, args=(per_replica, sparse_values, sparse_indices))

  dense, sparse = run()
  # Replica values [1, 10] and [2, 20]: the sum, on each replica.
  for component in STRATEGY.experimental_local_results(dense):
    np.testing.assert_array_equal(component.numpy(), [3.0, 30.0])
  # Sparse: row 0 gets [1, 2] from replica 0, row 2 gets [2, 4] from replica 1.
  for component in STRATEGY.experimental_local_results(sparse):
    np.testing.assert_array_equal(component.numpy(), [[1.0, 2.0], [0.0, 0.0], [2.0, 4.0]])


# ---- other helpers ------------------------------------------------------------------------


def test_creation_scope_follows_variable():
  with STRATEGY.scope():
    mirrored = tf.Variable(tf.ones(2))
  plain = tf.Variable(tf.ones(2))
  with distribution.creation_scope(mirrored):
    assert_mirrored(tf.Variable(tf.zeros(2)))
  with distribution.creation_scope(plain):
    assert not isinstance(tf.Variable(tf.zeros(2)), values_lib.DistributedValues)
  with STRATEGY.scope():
    with distribution.creation_scope():
      assert_mirrored(tf.Variable(tf.zeros(2)))


def test_in_cross_replica_context_from_replica_and_cross_replica():
  seen = []

  def fn(strategy, x):
    seen.append(strategy)
    return x

  with STRATEGY.scope():
    assert distribution.in_cross_replica_context(fn, 5) == 5
  assert seen[-1] is STRATEGY

  @tf.function
  def run():
    STRATEGY.run(lambda: distribution.in_cross_replica_context(fn, tf.constant(1.0)))

  run()
  assert seen[-1] is STRATEGY


def test_update_on_each_device_gives_each_device_its_components():
  with STRATEGY.scope():
    first, second = tf.Variable([1.0, 2.0]), tf.Variable(3.0)
  deltas = STRATEGY.experimental_distribute_values_from_function(
      lambda ctx: tf.constant(float(ctx.replica_id_in_sync_group + 1)))
  calls = []

  def update(variables, per_variable, shared):
    (scales,) = per_variable
    calls.append(tf.DeviceSpec.from_string(variables[0].device).device_index)
    for var, scale in zip(variables, scales):
      var.assign_add(tf.ones_like(var) * scale * shared)

  distribution.update_on_each_device(STRATEGY, update, [first, second], ([deltas, deltas],),
                                     tf.constant(10.0))
  assert sorted(calls) == [0, 1]  # one call per device, covering all variables
  np.testing.assert_array_equal(first.values[0].numpy(), [11.0, 12.0])
  np.testing.assert_array_equal(first.values[1].numpy(), [21.0, 22.0])
  np.testing.assert_array_equal(second.values[1].numpy(), 23.0)


def test_update_on_each_device_without_strategy_calls_once():
  var = tf.Variable(1.0)
  calls = []

  def update(variables, per_variable, shared):
    calls.append(1)
    variables[0].assign_add(per_variable[0][0] + shared)

  distribution.update_on_each_device(tf.distribute.get_strategy(), update, [var],
                                     ([tf.constant(2.0)],), tf.constant(0.5))
  assert calls == [1] and var.numpy() == 3.5


def test_as_tf_variable():
  import keras  # pylint: disable=g-import-not-at-top
  keras_var = keras.Variable(1.0)
  assert isinstance(distribution.as_tf_variable(keras_var), tf.Variable)
  assert distribution.as_tf_variable(keras_var) is keras_var.value
  plain = tf.Variable(1.0)
  assert distribution.as_tf_variable(plain) is plain


# ---- program_device ---------------------------------------------------------------------


def test_program_device():
  assert distribution.program_device(tf.distribute.get_strategy()) is None
  one = tf.distribute.OneDeviceStrategy("/cpu:1")
  assert distribution.program_device(one).endswith("CPU:1")
  assert distribution.program_device(STRATEGY) is None


if __name__ == "__main__":
  pytest_main.main(__file__)
