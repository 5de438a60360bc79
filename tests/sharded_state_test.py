"""Tests of sharded Adam state (`Adam(shard_state=True)`, adam_xla/sharding.py).

Sharding is a layout of the state across replicas: under MirroredStrategy on 2 and 4 logical
CPUs the weights after 20 steps must equal those of mirrored state bit for bit (the CPU
kernel does the same arithmetic on the same elements; with amsgrad XLA computes it, see
`test_amsgrad_matches_mirrored_to_an_ulp`), replicas must stay bit-identical, each replica must
hold 1/N of the state, and checkpoints must move between layouts and replica counts. The
module runs on four logical CPUs, configured before the TF runtime starts.
"""

import math

import numpy as np
import pytest
import tensorflow as tf

from tests import logical_cpus

logical_cpus.require(4)  # before anything starts the TF runtime

import keras  # pylint: disable=wrong-import-position

import adam_xla  # pylint: disable=wrong-import-position
from adam_xla import sharding  # pylint: disable=wrong-import-position
from tests import numpy_adam  # pylint: disable=wrong-import-position
from tests import pytest_main  # pylint: disable=wrong-import-position

# 389 elements: shards of 195 (N=2) and 98 (N=4) are padded, and cut variables in pieces.
SHAPES = [(37, 5), (11,), (), (64, 3)]
STEPS = 20
RATE = 0.01


def _strategy(replicas):
  """MirroredStrategy on `replicas` logical CPUs, its reductions through one device: TF numbers
  each strategy's collective groups and instances from the same start, so collectives of
  several strategies in one process abort each other. (tests/sharded_state_multi_worker_test.py
  runs the collectives, one strategy per process.)"""
  return tf.distribute.MirroredStrategy([f"/cpu:{i}" for i in range(replicas)],
                                        tf.distribute.ReductionToOneDevice())


def _problem(seed=0):
  rng = np.random.default_rng(seed)
  inits = [rng.normal(size=s).astype(np.float32) for s in SHAPES]
  grads = [np.stack([rng.normal(size=s).astype(np.float32) for _ in range(STEPS)]) for s in SHAPES]
  return inits, grads


class _Run:
  """Variables and an Adam under `strategy`, and a compiled step whose replica r applies
  (r + 1) * grads[step] (so that the replica sum is a real one). Variable 1 gets a sparse
  gradient with a repeated id, and the gradient of variable 3 at step `nan_at` is NaN."""

  def __init__(self, strategy, inits, shard_state, *, exclude_from_decay=(), **adam_args):
    self.strategy = strategy
    with strategy.scope():
      self.variables = [tf.Variable(init) for init in inits]
      self.opt = adam_xla.Adam(RATE, shard_state=shard_state, **adam_args)
      self.opt.exclude_from_weight_decay([self.variables[i] for i in exclude_from_decay])

  def train(self, grads, steps=STEPS, nan_at=None, skip_nonfinite=False):
    grads = [tf.constant(g) for g in grads]
    variables, opt = self.variables, self.opt

    @tf.function
    def step(t):

      def replica_fn():
        scale = tf.cast(tf.distribute.get_replica_context().replica_id_in_sync_group + 1,
                        tf.float32)
        g = [scale * tf.gather(grad, t) for grad in grads]
        ids = tf.constant([3, 3, 10, 0])
        g[1] = tf.IndexedSlices(tf.gather(g[1], ids), ids, tf.constant([11]))
        if nan_at is not None:
          g[3] = tf.where(tf.equal(t, nan_at), g[3] * np.nan, g[3])
        finite = lambda summed: tf.reduce_all(
            [tf.reduce_all(tf.math.is_finite(tf.convert_to_tensor(x))) for x in summed])
        opt.apply_gradients(zip(g, variables), apply_if=finite if skip_nonfinite else None)

      self.strategy.run(replica_fn)

    for t in range(steps):
      step(tf.constant(t))
    return self

  def weights(self):
    """Each variable's copies; asserts that the replicas hold identical values."""
    values = []
    for var in self.variables:
      copies = [c.numpy() for c in self.strategy.experimental_local_results(var)]
      for copy in copies[1:]:
        np.testing.assert_array_equal(copy, copies[0])
      values.append(copies[0])
    return values

  def slots(self):
    return {(i, name): self.opt.slot(var, name).numpy() for i, var in enumerate(self.variables)
            for name in self.opt.slot_names}


def _assert_same(a, b):
  for x, y in zip(a, b):
    np.testing.assert_array_equal(x, y)


@pytest.mark.parametrize("replicas", [2, 4])
@pytest.mark.parametrize("adam_args", [
    {},
    {"global_clipnorm": 5.0, "weight_decay": 0.02},
    {"clipnorm": 1.0, "clipvalue": 0.5},
], ids=["plain", "global_clipnorm_and_decay", "clipnorm_and_clipvalue"])
def test_sharded_equals_mirrored_bit_for_bit(replicas, adam_args):
  inits, grads = _problem()
  mirrored = _Run(_strategy(replicas), inits, False, exclude_from_decay=[2], **adam_args)
  sharded = _Run(_strategy(replicas), inits, True, exclude_from_decay=[2], **adam_args)
  _assert_same(sharded.train(grads).weights(), mirrored.train(grads).weights())
  for key, value in mirrored.slots().items():
    np.testing.assert_array_equal(sharded.slots()[key], value, err_msg=str(key))
  assert all(isinstance(sharded.opt.slot(v, "m"), sharding.ShardedSlot) for v in sharded.variables)
  assert int(sharded.opt.iterations.numpy()) == STEPS


def _numpy_reference(inits, grads, **adam_args):
  """The float64 NumPy Adam of 2 replicas' summed gradients, as `_Run.train` gives them."""
  reference = numpy_adam.NumpyAdam(RATE, **adam_args)
  params = [x.astype(np.float64) for x in inits]
  for t in range(STEPS):
    step_grads = [3.0 * g[t] for g in grads]  # replicas 1 + 2
    sparse = np.zeros_like(step_grads[1])
    for row in (3, 3, 10, 0):
      sparse[row] += step_grads[1][row]
    step_grads[1] = sparse
    reference.step(params, step_grads)
  return params


def test_sharded_equals_the_numpy_reference():
  inits, grads = _problem()
  sharded = _Run(_strategy(2), inits, True, global_clipnorm=5.0).train(grads)
  for got, want in zip(sharded.weights(), _numpy_reference(inits, grads, global_clipnorm=5.0)):
    np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-6)


def test_nonfinite_steps_are_skipped_as_mirrored():
  inits, grads = _problem()
  runs = [
      _Run(_strategy(4), inits, shard).train(grads, nan_at=5, skip_nonfinite=True)
      for shard in (False, True)
  ]
  _assert_same(runs[1].weights(), runs[0].weights())
  assert all(np.isfinite(w).all() for w in runs[1].weights())
  assert int(runs[1].opt.iterations.numpy()) == STEPS - 1


def test_amsgrad_matches_mirrored_to_an_ulp():
  """With amsgrad XLA computes the step (the CPU kernel has no vhat). XLA:CPU compiles each
  fused loop for its shape, and a shard's pieces are other shapes than whole variables, so an
  element can round differently in its last bit; the arithmetic is the same."""
  inits, grads = _problem()
  runs = [_Run(_strategy(2), inits, shard, amsgrad=True).train(grads) for shard in (False, True)]
  for got, want in zip(runs[1].weights(), runs[0].weights()):
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)
  for key, value in runs[0].slots().items():
    np.testing.assert_allclose(runs[1].slots()[key], value, rtol=1e-6, atol=1e-10)
  for got, want in zip(runs[1].weights(), _numpy_reference(inits, grads, amsgrad=True)):
    np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-6)


@pytest.mark.parametrize("replicas", [2, 4])
def test_each_replica_holds_a_shard(replicas):
  inits, _ = _problem()
  total = sum(math.prod(s) for s in SHAPES)
  for amsgrad, slots in ((False, 2), (True, 3)):
    runs = {
        shard: _Run(_strategy(replicas), inits, shard, amsgrad=amsgrad) for shard in (False, True)
    }
    for run in runs.values():
      run.opt.build(run.variables)
    assert runs[False].opt.state_bytes_per_replica() == total * 4 * slots
    group = runs[True].opt._slot_table.groups()[0]  # pylint: disable=protected-access
    # Shards end on rows, each within a row of the exact 1/N point: padding < 2 rows.
    lengths = [sum(p.size for p in group.layout.pieces(r)) for r in range(replicas)]
    assert sum(lengths) == total
    assert group.layout.shard_size == max(lengths) < math.ceil(total / replicas) + 2 * 5
    assert runs[True].opt.state_bytes_per_replica() == group.layout.shard_size * 4 * slots
    shards = runs[True].strategy.experimental_local_results(group.shards["m"])
    assert [s.shape.num_elements() for s in shards] == [group.layout.shard_size] * replicas
    assert len({s.device for s in shards}) == replicas


def _checkpoint(run):
  return tf.train.Checkpoint(variables=run.variables, optimizer=run.opt)


@pytest.mark.parametrize("source,target,deferred", [
    ((2, True), (4, False), False),
    ((2, True), (4, True), True),
    ((4, False), (2, True), True),
    ((4, True), (1, False), False),
])
def test_checkpoints_move_between_layouts_and_replica_counts(tmp_path, source, target, deferred):
  inits, grads = _problem()
  make = lambda replicas, shard: _Run(
      _strategy(replicas) if replicas > 1 else tf.distribute.get_strategy(), inits, shard)
  saved = make(*source).train(grads, steps=5)
  path = _checkpoint(saved).save(str(tmp_path / "ckpt"))
  restored = make(*target)
  if not deferred:
    restored.opt.build(restored.variables)
  status = _checkpoint(restored).restore(path)
  if deferred:
    restored.opt.build(restored.variables)
  status.assert_consumed()
  for key, value in saved.slots().items():
    np.testing.assert_array_equal(restored.slots()[key], value, err_msg=str(key))
  _assert_same(restored.weights(), saved.weights())
  assert int(restored.opt.iterations.numpy()) == 5
  # Training on from there agrees with the source run trained on.
  later = [g[5:] for g in grads]
  if target[0] == source[0]:
    _assert_same(restored.train(later, steps=5).weights(), saved.train(later, steps=5).weights())


def test_checkpoint_keys_and_shapes_do_not_depend_on_sharding(tmp_path):
  inits, _ = _problem()
  keys = []
  for shard in (False, True):
    run = _Run(_strategy(2), inits, shard)
    run.opt.build(run.variables)
    path = _checkpoint(run).save(str(tmp_path / f"ckpt_{shard}"))
    keys.append(sorted(tf.train.list_variables(path)))
  assert keys[0] == keys[1]


def test_slot_view_assign_writes_each_replicas_pieces():
  inits, _ = _problem()
  run = _Run(_strategy(4), inits, True)
  run.opt.build(run.variables)
  value = np.arange(37 * 5, dtype=np.float32).reshape(37, 5)
  run.opt.slot(run.variables[0], "v").assign(value)
  np.testing.assert_array_equal(run.opt.slot(run.variables[0], "v").numpy(), value)
  np.testing.assert_array_equal(run.opt.slot(run.variables[1], "v").numpy(), np.zeros(11))
  with pytest.raises(ValueError, match="shape"):
    run.opt.slot(run.variables[0], "v").assign(np.zeros(3, np.float32))


def test_one_device_and_no_strategy_change_nothing():
  inits, grads = _problem()
  for strategy in (tf.distribute.get_strategy(), tf.distribute.OneDeviceStrategy("/cpu:0")):
    runs = [_Run(strategy, inits, shard) for shard in (False, True)]
    for run in runs:
      run.opt.build(run.variables)
    assert runs[1].opt.state_bytes_per_replica() == runs[0].opt.state_bytes_per_replica()
    assert not runs[1].opt._slot_table.groups()  # pylint: disable=protected-access


def test_excluded_tables_stay_mirrored_and_lazy_mode_needs_the_exclusion():
  inits, grads = _problem()
  strategy = _strategy(2)
  with strategy.scope():
    variables = [tf.Variable(init) for init in inits]
    opt = adam_xla.Adam(RATE, shard_state=True, sparse_mode="lazy")
  ids = tf.constant([3, 10])
  table_grad = tf.IndexedSlices(tf.ones([2]), ids, tf.constant([11]))

  def step(opt):
    tf.function(lambda: strategy.run(lambda: opt.apply_gradients([(table_grad, variables[
        1]), (tf.ones_like(variables[0]), variables[0])])))()

  with pytest.raises(ValueError, match="exclude_from_state_sharding"):
    step(opt)
  with strategy.scope():
    opt = adam_xla.Adam(RATE, shard_state=True, sparse_mode="lazy")
  opt.exclude_from_state_sharding([variables[1]])
  before = variables[1].numpy()
  step(opt)
  assert not isinstance(opt.slot(variables[1], "m"), sharding.ShardedSlot)
  assert isinstance(opt.slot(variables[0], "m"), sharding.ShardedSlot)
  changed = np.flatnonzero(variables[1].numpy() != before)
  np.testing.assert_array_equal(changed, [3, 10])  # lazy: the batch's rows only
  with pytest.raises(ValueError, match="before the optimizer is built"):
    opt.exclude_from_state_sharding([variables[0]])


def test_bad_shard_state_is_rejected():
  with pytest.raises(TypeError, match="shard_state"):
    adam_xla.Adam(shard_state="yes")
  assert adam_xla.Adam(shard_state=True).get_config()["shard_state"] is True
  assert adam_xla.Adam.from_config(adam_xla.Adam(shard_state=True).get_config()).shard_state


def test_keras_fit_with_sharded_state_equals_mirrored():
  rng = np.random.default_rng(3)
  x = rng.normal(size=[64, 6]).astype(np.float32)
  y = rng.normal(size=[64, 2]).astype(np.float32)
  weights = []
  for shard in (False, True):
    strategy = _strategy(2)
    with strategy.scope():
      keras.utils.set_random_seed(7)
      model = keras.Sequential([
          keras.Input((6,)),
          keras.layers.Dense(9, activation="tanh"),
          keras.layers.Dense(2)
      ])
      adam_xla.compile_model(model, adam_xla.Adam(RATE, shard_state=shard), loss="mse")
    model.fit(x, y, batch_size=16, epochs=2, shuffle=False, verbose=0)
    assert model.optimizer.shard_state == shard
    weights.append([v.numpy() for v in model.trainable_variables])
  _assert_same(weights[1], weights[0])


if __name__ == "__main__":
  pytest_main.main(__file__)
