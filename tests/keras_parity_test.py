"""adam_xla.Adam where Keras' own optimizer tests found it behaving unlike keras.optimizers.Adam.

Each behaviour is checked against Keras itself (the same calls on `keras.optimizers.Adam`)
and/or the float64 NumPy reference: variable constraints (also inside `make_train_step`, also
per device under MirroredStrategy), reading and setting `learning_rate`, an empty gradient
list, and `tf.IndexedSlices` built from Python tuples.

The CPU is split into two logical devices before TensorFlow starts, for the MirroredStrategy
tests; they are skipped when another module in the same process started TensorFlow first.
"""

import numpy as np
import pytest
import tensorflow as tf

from tests import logical_cpus

_TWO_CPUS = logical_cpus.split(2) >= 2  # before anything starts the TF runtime

# pylint: disable=g-direct-tensorflow-import,wrong-import-position
import keras
from tensorflow.python.distribute import values as values_lib

import adam_xla
from tests import numpy_adam
from tests import pytest_main

MODES = ["eager", "function", "jit"]
needs_two_cpus = logical_cpus.skip_unless(2)
# One strategy for the module (TF's collectives are keyed per process).
MIRRORED = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"]) if _TWO_CPUS else None


def _compiled(fn, mode):
  return fn if mode == "eager" else tf.function(fn, jit_compile=(mode == "jit"))


def _step(opt, variables, mode="eager", **kwargs):
  """step(*grads): one apply_gradients of `grads` to `variables`, run as `mode` says."""
  return _compiled(lambda *grads: opt.apply_gradients(zip(grads, variables), **kwargs), mode)


# Keras casts Python betas through float32 (0.999 becomes 0.99900001, ours is exact in float64);
# with betas and rates that float32 holds exactly the two agree to rounding.
EXACT = {"beta_1": 0.875, "beta_2": 1 - 2.0**-10}


def _schedule(rate):
  """rate for steps 0 and 1, rate / 2 for steps 2 and 3, ..."""
  return keras.optimizers.schedules.ExponentialDecay(rate, 2, 0.5, staircase=True)


# ---- 1. Variable constraints ---------------------------------------------------------------


def _constrained_dense(seed):
  keras.utils.set_random_seed(seed)
  layer = keras.layers.Dense(3, kernel_constraint="non_neg")
  layer.build((None, 4))
  return layer


@pytest.mark.parametrize("mode", MODES)
def test_keras_variable_constraint_is_applied_after_each_step_as_keras_does(mode):
  ours, theirs = _constrained_dense(0), _constrained_dense(0)
  assert np.min(ours.kernel.numpy()) < 0  # the initial kernel breaks the constraint
  rng = np.random.default_rng(0)
  grads = [rng.normal(size=(4, 3)).astype(np.float32) for _ in range(6)]
  opt, keras_opt = adam_xla.Adam(0.125, **EXACT), keras.optimizers.Adam(0.125, **EXACT)
  step = _step(opt, ours.trainable_variables, mode)
  for g in grads:
    step(tf.constant(g), tf.constant(g[0]))
    keras_opt.apply_gradients(zip([tf.constant(g), tf.constant(g[0])], theirs.trainable_variables))
  kernel = ours.kernel.numpy()
  assert np.min(kernel) == 0.0 and np.sum(kernel == 0.0) >= 2
  np.testing.assert_allclose(kernel, theirs.kernel.numpy(), rtol=1e-5, atol=1e-6)
  # The bias has no constraint and goes negative, as in Keras.
  assert np.min(ours.bias.numpy()) < 0
  np.testing.assert_allclose(ours.bias.numpy(), theirs.bias.numpy(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("mode", MODES)
def test_tf_variable_constraint_matches_the_reference_projected_after_each_step(mode):
  low, high = -0.25, 0.3
  initial = np.array([[0.1, -0.2, 0.5], [0.0, 0.2, -0.4]])
  var = tf.Variable(initial, constraint=lambda w: tf.clip_by_value(w, low, high))
  free = tf.Variable(initial)
  grads = np.array([[1.0, -2.0, 0.5], [-1.0, 0.25, -3.0]])
  opt = adam_xla.Adam(0.0625)  # a float32 number: the rate's variable is float32 (as Keras')
  step = _step(opt, [var, free], mode)
  ref = numpy_adam.NumpyAdam(0.0625)
  params = [initial.copy(), initial.copy()]
  for _ in range(8):
    step(tf.constant(grads), tf.constant(grads))
    ref.step(params, [grads, grads])
    np.clip(params[0], low, high, out=params[0])
  np.testing.assert_allclose(var.numpy(), params[0], rtol=1e-12, atol=1e-12)
  np.testing.assert_allclose(free.numpy(), params[1], rtol=1e-12, atol=1e-12)
  assert np.max(var.numpy()) == high and np.max(free.numpy()) > high


@pytest.mark.parametrize("mode", MODES)
def test_skipped_step_does_not_apply_the_constraint(mode):
  """apply_if False leaves a variable as it was, even one outside its constraint (Keras'
  loss-scale optimizer does not apply a skipped step at all)."""
  initial = np.array([-1.0, 2.0, -3.0], np.float32)
  var = tf.Variable(initial, constraint=keras.constraints.NonNeg())
  opt = adam_xla.Adam(0.1)
  applied = tf.Variable(False)
  step = _step(opt, [var], mode, apply_if=lambda _: tf.convert_to_tensor(applied))
  step(tf.ones(3))
  np.testing.assert_array_equal(var.numpy(), initial)
  assert int(opt.iterations.numpy()) == 0
  applied.assign(True)
  step(tf.ones(3))
  np.testing.assert_allclose(var.numpy(), [0.0, 1.9, 0.0], rtol=1e-6)


def _train_with_keras(model, batches):
  model.compile(keras.optimizers.Adam(2.0**-7, **EXACT),
                keras.losses.SparseCategoricalCrossentropy(from_logits=True))
  for x, y in batches:
    model.train_on_batch(x, y)


def _constrained_model():
  keras.utils.set_random_seed(3)
  return keras.Sequential([
      keras.Input((5,)),
      keras.layers.Dense(8, activation="tanh", kernel_constraint="non_neg"),
      keras.layers.Dense(3)
  ])


@pytest.mark.parametrize("strategy_name",
                         ["default", pytest.param("mirrored", marks=needs_two_cpus)])
def test_make_train_step_applies_constraints_on_every_device_as_keras_fit(strategy_name):
  rng = np.random.default_rng(1)
  batches = [(rng.normal(size=(8, 5)).astype(np.float32), rng.integers(0, 3, 8)) for _ in range(10)]
  reference = _constrained_model()
  _train_with_keras(reference, batches)
  strategy = MIRRORED if strategy_name == "mirrored" else tf.distribute.get_strategy()
  with strategy.scope():
    model = _constrained_model()
    opt = adam_xla.Adam(2.0**-7, **EXACT)
  loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction=None)
  step = adam_xla.make_train_step(model, loss, opt, strategy=strategy)
  dataset = tf.data.Dataset.from_tensor_slices((np.concatenate([x for x, _ in batches]),
                                                np.concatenate([y for _, y in batches])))
  iterator = iter(step.distribute(dataset.batch(8, drop_remainder=True)))
  for _ in batches:
    step(iterator)
  kernel = model.layers[0].kernel
  copies = ([c.numpy() for c in kernel.value.values]
            if strategy_name == "mirrored" else [kernel.numpy()])
  assert len(copies) == (2 if strategy_name == "mirrored" else 1)
  for copy in copies:
    assert np.min(copy) == 0.0 and np.sum(copy == 0.0) >= 2
    np.testing.assert_allclose(copy, reference.layers[0].kernel.numpy(), rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(model.layers[1].kernel.numpy(), reference.layers[1].kernel.numpy(),
                             rtol=1e-4, atol=1e-6)


# ---- 2. Setting the learning rate: reaches compiled steps or raises ------------------------


def _problem():
  """A variable and a constant gradient: bias-corrected m / sqrt(v) is 1 (up to epsilon), so
  each step moves by the learning rate of that step."""
  return tf.Variable([0.0, 0.0], dtype=tf.float64), tf.constant([1.0, -1.0], tf.float64)


def _reference(rates):
  """The NumPy reference's variable after steps whose learning rates are `rates`."""
  ref = numpy_adam.NumpyAdam(learning_rate=lambda step: rates[step])
  params = [np.zeros(2)]
  for _ in rates:
    ref.step(params, [np.array([1.0, -1.0])])
  return params[0]


def test_number_after_a_schedule_raises_type_error_like_keras():
  with pytest.raises(TypeError):
    keras.optimizers.Adam(_schedule(0.5)).learning_rate = 2.0
  opt = adam_xla.Adam(_schedule(0.5))
  with pytest.raises(TypeError, match="`learning_rate`.*LearningRateSchedule.*not settable"):
    opt.learning_rate = 2.0
  # The step still follows the schedule.
  var, grad = _problem()
  step = _step(opt, [var], "jit")
  for _ in range(4):
    step(grad)
  np.testing.assert_allclose(var.numpy(), _reference([0.5, 0.5, 0.25, 0.25]), rtol=1e-6)


@pytest.mark.parametrize("initial", [1.0, tf.constant(1.0, tf.float64)], ids=["float", "tensor"])
def test_number_reaches_a_traced_step(initial):
  var, grad = _problem()
  opt = adam_xla.Adam(initial)
  traces = []
  step = tf.function(lambda: traces.append(1) or opt.apply_gradients([(grad, var)]),
                     jit_compile=True)
  opt.build([var])  # a step that creates the state traces twice
  step()
  opt.learning_rate = 2.0
  step()
  opt.learning_rate = tf.constant(0.5)
  step()
  assert len(traces) == 1
  np.testing.assert_allclose(var.numpy(), _reference([1.0, 2.0, 0.5]), rtol=1e-6)


@pytest.mark.parametrize(
    "initial, replacement", [
        (1.0, _schedule(3.0)),
        (_schedule(1.0), _schedule(3.0)),
        (lambda: 1.0, lambda: 3.0),
        (lambda: 1.0, 3.0),
    ],
    ids=["float_to_schedule", "schedule_to_schedule", "callable_to_callable", "callable_to_float"])
def test_replacing_after_a_traced_step_raises_and_keeps_the_rate(initial, replacement):
  var, grad = _problem()
  opt = adam_xla.Adam(initial)
  step = _step(opt, [var], "function")
  step(grad)
  with pytest.raises(TypeError, match="`learning_rate` cannot be replaced.*new optimizer"):
    opt.learning_rate = replacement
  step(grad)
  np.testing.assert_allclose(var.numpy(), _reference([1.0, 1.0]), rtol=1e-6)


@pytest.mark.parametrize(
    "initial, replacement, later_rates", [
        (1.0, _schedule(3.0), [3.0, 1.5, 1.5]),
        (_schedule(1.0), _schedule(3.0), [3.0, 1.5, 1.5]),
        (lambda: 1.0, 3.0, [3.0, 3.0, 3.0]),
        (_schedule(1.0), lambda: 3.0, [3.0, 3.0, 3.0]),
    ],
    ids=["float_to_schedule", "schedule_to_schedule", "callable_to_float", "schedule_to_callable"])
def test_replacing_before_any_traced_step_reaches_the_step_traced_later(
    initial, replacement, later_rates):
  """Eager steps trace nothing, so replacing is still safe there."""
  var, grad = _problem()
  opt = adam_xla.Adam(initial)
  opt.apply_gradients([(grad, var)])  # eager: t = 1, rate 1.0
  opt.learning_rate = replacement  # a schedule is called with iterations = 1, 2, 3 below
  step = _step(opt, [var], "jit")
  for _ in later_rates:
    step(grad)
  np.testing.assert_allclose(var.numpy(), _reference([1.0] + later_rates), rtol=1e-6)
  if not callable(replacement):
    opt.learning_rate = 0.25  # a number that replaced a callable is in a variable
    step(grad)
    np.testing.assert_allclose(var.numpy(), _reference([1.0] + later_rates + [0.25]), rtol=1e-6)


def test_betas_and_epsilon_are_not_settable():
  """A traced step holds numeric betas as constants: setting them would go stale, so the
  attributes are read-only (a callable beta varies them instead)."""
  opt = adam_xla.Adam(0.1, beta_1=0.5)
  for name in ("beta_1", "beta_2", "epsilon"):
    with pytest.raises(AttributeError):
      setattr(opt, name, 0.25)
  assert (opt.beta_1, opt.beta_2, opt.epsilon) == (0.5, 0.999, 1e-7)
  var = tf.Variable([0.0])
  opt.apply_gradients([(tf.constant([2.0]), var)])
  np.testing.assert_allclose(opt.slot(var, "m").numpy(), [1.0])  # (1 - beta_1) * 2


# ---- 3. Reading the learning rate -----------------------------------------------------------


def test_learning_rate_reads_as_keras_for_a_float():
  ours, theirs = adam_xla.Adam(0.02), keras.optimizers.Adam(0.02)
  assert isinstance(ours.learning_rate, tf.Variable)  # right after construction, as Keras
  assert ours.learning_rate.dtype == tf.float32
  assert float(ours.learning_rate.numpy()) == float(theirs.learning_rate.numpy())
  ours.learning_rate = theirs.learning_rate = 0.5
  assert float(ours.learning_rate.numpy()) == float(theirs.learning_rate.numpy()) == 0.5
  assert ours.get_config()["learning_rate"] == theirs.get_config()["learning_rate"] == 0.5


@pytest.mark.parametrize("rate, after_three_steps", [(_schedule(0.5), 0.25),
                                                     (lambda: 0.125, 0.125)],
                         ids=["schedule", "callable"])
def test_learning_rate_reads_as_keras_for_a_schedule_or_callable(rate, after_three_steps):
  ours, theirs = adam_xla.Adam(rate, **EXACT), keras.optimizers.Adam(rate, **EXACT)
  variables = [tf.Variable([1.0, 2.0]), keras.Variable([1.0, 2.0])]
  for _ in range(3):
    expected = float(np.asarray(theirs.learning_rate))
    assert float(np.asarray(ours.learning_rate)) == pytest.approx(expected, rel=1e-7)
    ours.apply_gradients([(tf.constant([1.0, 1.0]), variables[0])])
    theirs.apply_gradients([(tf.constant([1.0, 1.0]), variables[1])])
  assert float(np.asarray(ours.learning_rate)) == after_three_steps
  np.testing.assert_allclose(variables[0].numpy(), variables[1].numpy(), rtol=1e-6)


def test_get_config_keeps_the_schedule_serialized():
  schedule = _schedule(0.5)
  opt = adam_xla.Adam(schedule)
  opt.apply_gradients([(tf.constant(1.0), tf.Variable(1.0))])
  config = opt.get_config()
  assert config["learning_rate"] == keras.optimizers.schedules.serialize(schedule)
  clone = adam_xla.Adam.from_config(config)
  clone.iterations.assign(3)
  assert float(clone.learning_rate) == 0.25


def test_learning_rate_is_not_saved_and_checkpoints_without_it_restore(tmp_path):
  """A checkpoint from an optimizer without a rate variable (a schedule, or a run from before
  the rate was a variable on first read) restores into one with it, under the trainers'
  `assert_existing_objects_matched`; the rate stays the restoring run's own."""
  var = tf.Variable([1.0, 2.0])
  old = adam_xla.Adam(_schedule(0.1))
  old.apply_gradients([(tf.constant([1.0, 1.0]), var)])
  path = tf.train.Checkpoint(optimizer=old).save(str(tmp_path / "ckpt"))
  assert not any("learning_rate" in name for name, _ in tf.train.list_variables(path))
  new = adam_xla.Adam(0.25)
  assert isinstance(new.learning_rate, tf.Variable)
  new.build([var])
  tf.train.Checkpoint(optimizer=new).restore(path).assert_existing_objects_matched()
  assert int(new.iterations.numpy()) == 1
  np.testing.assert_array_equal(new.slot(var, "m").numpy(), old.slot(var, "m").numpy())
  assert float(new.learning_rate.numpy()) == 0.25
  saved = tf.train.Checkpoint(optimizer=new).save(str(tmp_path / "again"))
  assert not any("learning_rate" in name for name, _ in tf.train.list_variables(saved))


@needs_two_cpus
def test_learning_rate_variable_is_mirrored_like_the_other_state():
  with MIRRORED.scope():
    opt = adam_xla.Adam(0.1)
    rate = opt.learning_rate
  for variable in (rate, opt.iterations):
    assert isinstance(variable, values_lib.MirroredVariable), type(variable)
    assert {tf.DeviceSpec.from_string(c.device).device_index for c in variable.values} == {0, 1}
  opt.learning_rate = 0.5
  assert [float(c.numpy()) for c in rate.values] == [0.5, 0.5]


# ---- 4. No gradients ------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_empty_gradient_list_is_a_no_op_like_keras_apply(mode):
  var = tf.Variable([1.0, 2.0])
  ours, theirs = adam_xla.Adam(0.1), keras.optimizers.Adam(0.1)
  ours.apply_gradients([(tf.constant([1.0, 1.0]), var)])
  after_one = var.numpy()
  empty = _compiled(lambda: ours.apply_gradients([]), mode)
  assert int(empty()) == 1
  _compiled(lambda: ours.apply_gradients(zip([], [])), mode)()
  theirs.apply([])
  assert int(ours.iterations.numpy()) == 1 and int(theirs.iterations.numpy()) == 0
  np.testing.assert_array_equal(var.numpy(), after_one)
  assert int(adam_xla.Adam().apply_gradients([]).numpy()) == 0


def test_all_gradients_none_raises_value_error_like_keras():
  for opt, var in ((keras.optimizers.Adam(), keras.Variable(1.0)), (adam_xla.Adam(),
                                                                    tf.Variable(1.0))):
    with pytest.raises(ValueError, match="(?i)no gradients provided for any variable"):
      opt.apply_gradients([(None, var)])
    assert int(opt.iterations.numpy()) == 0


# ---- 5. IndexedSlices from Python tuples ---------------------------------------------------

_TUPLE_BATCHES = [((2, 0, 2), [[1.0, -2.0], [0.5, 3.0], [2.0, 2.0]]),
                  ((1, 1), [[-1.0, 0.5], [0.25, 0.25]])]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("sparse_mode", ["dense", "lazy"])
def test_indexed_slices_with_tuple_indices_and_shape(sparse_mode, mode):
  """Both sparse modes against the reference; the IndexedSlices is built inside the step from
  Python tuples (repeated ids summed; in dense mode absent rows move by their momentum)."""
  initial = np.arange(8.0).reshape(4, 2)
  table = tf.Variable(initial)
  opt = adam_xla.Adam(0.125, sparse_mode=sparse_mode)
  steps = [
      _compiled(
          lambda ids=ids, rows=rows: opt.apply_gradients([(tf.IndexedSlices(
              tf.constant(rows, tf.float64), ids, (4, 2)), table)]), mode)
      for ids, rows in _TUPLE_BATCHES
  ]
  ref = numpy_adam.NumpyAdam(0.125, lazy=sparse_mode == "lazy")
  params = [initial.copy()]
  for step, (ids, rows) in [*zip(steps, _TUPLE_BATCHES)] * 2:
    step()
    dense = np.zeros_like(initial)
    np.add.at(dense, list(ids), rows)
    ref.step(params, [dense], touched_rows=[list(ids)])
  np.testing.assert_allclose(table.numpy(), params[0], rtol=1e-12)
  assert (table.numpy()[3] == initial[3]).all()  # never in a batch


def test_keras_accepts_the_same_tuple_indexed_slices():
  """Keras' result on a tuple IndexedSlices without repeated ids (where its sparse update is
  the dense formula) equals ours."""
  initial = np.arange(6.0, dtype=np.float32).reshape(3, 2)
  ours, theirs = tf.Variable(initial), keras.Variable(initial)
  grad = lambda: tf.IndexedSlices(tf.constant([[1.0, -1.0], [2.0, 0.5]]), (2, 0), (3, 2))
  opt, keras_opt = adam_xla.Adam(0.125, **EXACT), keras.optimizers.Adam(0.125, **EXACT)
  for _ in range(3):
    opt.apply_gradients([(grad(), ours)])
    keras_opt.apply_gradients([(grad(), theirs)])
  np.testing.assert_allclose(ours.numpy(), theirs.numpy(), rtol=1e-6)
  assert not np.array_equal(ours.numpy(), initial)


def test_indexed_slices_with_float_indices_are_refused():
  table = tf.Variable(np.zeros((3, 2), np.float32))
  with pytest.raises(TypeError, match="indices must be integers"):
    adam_xla.Adam().apply_gradients([(tf.IndexedSlices(tf.ones((1, 2)), (1.0,), (3, 2)), table)])


if __name__ == "__main__":
  pytest_main.main(__file__)
