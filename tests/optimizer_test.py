"""Tests of adam_xla.Adam (adam_xla/optimizer.py) against a float64 NumPy reference and Keras."""

import json
import re

import keras
import numpy as np
import pytest
import tensorflow as tf

import adam_xla
from adam_xla import cpu_kernel
from tests import numpy_adam
from tests import pytest_main

SHAPES = [(4, 3), (5,), ()]
STEPS = 25


def _quadratic_problem(seed, dtype):
  """Initial values, targets and curvatures of loss = sum 0.5 * a * (w - target)^2."""
  rng = np.random.default_rng(seed)
  init = [rng.normal(size=s) for s in SHAPES]
  target = [rng.normal(size=s) for s in SHAPES]
  curvature = [rng.uniform(0.1, 3.0, size=s) for s in SHAPES]
  cast = lambda xs: [np.asarray(x, dtype) for x in xs]
  return cast(init), cast(target), cast(curvature)


def _numpy_grads(params, target, curvature):
  return [a * (w - t) for w, t, a in zip(params, target, curvature)]


def _tf_loss(variables, target, curvature):
  return tf.add_n([
      tf.reduce_sum(0.5 * a * tf.square(w - t)) for w, t, a in zip(variables, target, curvature)
  ])


def _make_step(opt, variables, target, curvature, mode):

  def step():
    with tf.GradientTape() as tape:
      loss = _tf_loss(variables, target, curvature)
    opt.apply_gradients(zip(tape.gradient(loss, variables), variables))

  if mode == "eager":
    return step
  return tf.function(step, jit_compile=(mode == "jit"))


def _run_adam(opt_kwargs, mode, dtype, steps=STEPS, seed=0):
  init, target, curvature = _quadratic_problem(seed, dtype)
  variables = [tf.Variable(x) for x in init]
  opt = adam_xla.Adam(**opt_kwargs)
  step = _make_step(opt, variables, target, curvature, mode)
  for _ in range(steps):
    step()
  return [v.numpy() for v in variables], opt


def _run_reference(ref_kwargs, dtype, steps=STEPS, seed=0):
  init, target, curvature = _quadratic_problem(seed, dtype)
  params = [np.array(x, np.float64) for x in init]
  ref = numpy_adam.NumpyAdam(**ref_kwargs)
  for _ in range(steps):
    ref.step(params, _numpy_grads(params, target, curvature))
  return params, ref


_SCHEDULE = keras.optimizers.schedules.ExponentialDecay(0.05, decay_steps=5, decay_rate=0.5)

# (adam_xla kwargs, NumPy reference kwargs) for every option and some combinations.
OPTION_CASES = {
    "default": ({}, {}),
    "lr_0.02": ({"learning_rate": 0.02}, {"learning_rate": 0.02}),
    "amsgrad": ({"learning_rate": 0.02, "amsgrad": True}, {"learning_rate": 0.02, "amsgrad": True}),
    "epsilon_1.0": ({"learning_rate": 0.05,
                     "epsilon": 1.0}, {"learning_rate": 0.05, "epsilon": 1.0}),
    "epsilon_0.1": ({"learning_rate": 0.05,
                     "epsilon": 0.1}, {"learning_rate": 0.05, "epsilon": 0.1}),
    "betas": ({"learning_rate": 0.02, "beta_1": 0.5,
               "beta_2": 0.8}, {"learning_rate": 0.02, "beta_1": 0.5, "beta_2": 0.8}),
    "clipnorm": ({"learning_rate": 0.02, "clipnorm": 0.5}, {"learning_rate": 0.02,
                                                            "clipnorm": 0.5}),
    "clipvalue": ({"learning_rate": 0.02,
                   "clipvalue": 0.3}, {"learning_rate": 0.02, "clipvalue": 0.3}),
    "global_clipnorm": ({"learning_rate": 0.02,
                         "global_clipnorm": 0.7}, {"learning_rate": 0.02, "global_clipnorm": 0.7}),
    "clipvalue_and_clipnorm": ({"learning_rate": 0.02, "clipvalue": 0.3, "clipnorm": 0.5},
                               {"learning_rate": 0.02, "clipvalue": 0.3, "clipnorm": 0.5}),
    "amsgrad_global_clipnorm_eps":
        ({"learning_rate": 0.03, "amsgrad": True, "global_clipnorm": 0.5, "epsilon": 0.1},
         {"learning_rate": 0.03, "amsgrad": True, "global_clipnorm": 0.5, "epsilon": 0.1}),
    "schedule":
        ({"learning_rate": _SCHEDULE}, {"learning_rate": lambda step: 0.05 * 0.5**(step / 5)}),
    "callable_lr": ({"learning_rate": lambda: 0.04}, {"learning_rate": 0.04}),
    "weight_decay": ({"learning_rate": 0.02,
                      "weight_decay": 0.1}, {"learning_rate": 0.02, "weight_decay": 0.1}),
    "weight_decay_amsgrad_schedule": ({
        "learning_rate": _SCHEDULE, "weight_decay": 0.3, "amsgrad": True
    }, {"learning_rate": lambda step: 0.05 * 0.5**(step / 5), "weight_decay": 0.3,
        "amsgrad": True}),
    "tensor_and_callable_betas": ({
        "learning_rate": 0.02, "beta_1": tf.constant(0.8), "beta_2": lambda: 0.99,
        "epsilon": lambda: 1e-3
    }, {"learning_rate": 0.02, "beta_1": 0.8, "beta_2": 0.99, "epsilon": 1e-3}),
}


@pytest.mark.parametrize("mode", ["eager", "function", "jit"])
@pytest.mark.parametrize("case", sorted(OPTION_CASES))
def test_float64_matches_numpy_reference(case, mode):
  ours, ref = OPTION_CASES[case]
  got, _ = _run_adam(ours, mode, np.float64)
  want, _ = _run_reference(ref, np.float64)
  # The learning rate lives in a float32 variable (as in Keras): about 1e-8 relative.
  for g, w in zip(got, want):
    np.testing.assert_allclose(g, w, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("mode", ["eager", "jit"])
@pytest.mark.parametrize("case",
                         ["default", "amsgrad", "epsilon_1.0", "global_clipnorm", "schedule"])
def test_float32_matches_numpy_reference(case, mode):
  ours, ref = OPTION_CASES[case]
  got, _ = _run_adam(ours, mode, np.float32)
  want, _ = _run_reference(ref, np.float32)
  for g, w in zip(got, want):
    np.testing.assert_allclose(g, w, rtol=2e-4, atol=2e-5)


def test_reference_trajectory_actually_moves():
  """Guards the comparisons above against a problem on which nothing happens."""
  init, _, _ = _quadratic_problem(0, np.float64)
  want, _ = _run_reference({"learning_rate": 0.02}, np.float64)
  for w, x in zip(want, init):
    assert np.all(np.abs(w - x) > 1e-3)


KERAS_CASES = {
    "default": {"learning_rate": 0.02},
    "amsgrad": {"learning_rate": 0.02, "amsgrad": True},
    "epsilon_1.0": {"learning_rate": 0.05, "epsilon": 1.0},
    "clipnorm": {"learning_rate": 0.02, "clipnorm": 0.5},
    "clipvalue": {"learning_rate": 0.02, "clipvalue": 0.3},
    "global_clipnorm": {"learning_rate": 0.02, "global_clipnorm": 0.7},
    "schedule": {"learning_rate": _SCHEDULE},
}
# Keras casts Python betas through float32 even for float64 variables (0.999 becomes
# 0.99900001), which moves its trajectory by about 3e-5 relative over 25 steps; with betas that
# float32 holds exactly the two implementations must agree to float64 rounding.
_EXACT_BETAS = {"beta_1": 0.875, "beta_2": 1 - 2.0**-10}


def _keras_and_ours(kwargs, dtype):
  init, target, curvature = _quadratic_problem(1, dtype)
  ours = [keras.Variable(x) for x in init]
  theirs = [keras.Variable(x) for x in init]
  ours_opt = adam_xla.Adam(**kwargs)
  keras_opt = keras.optimizers.Adam(**kwargs)
  for _ in range(STEPS):
    for variables, opt in ((ours, ours_opt), (theirs, keras_opt)):
      with tf.GradientTape() as tape:
        loss = _tf_loss([v.value for v in variables], target, curvature)
      grads = tape.gradient(loss, [v.value for v in variables])
      opt.apply_gradients(zip(grads, variables))
  assert int(ours_opt.iterations.numpy()) == int(keras_opt.iterations.numpy()) == STEPS
  return [v.numpy() for v in ours], [v.numpy() for v in theirs]


@pytest.mark.parametrize("case", sorted(KERAS_CASES))
def test_matches_keras_adam_trajectory_float64(case):
  ours, theirs = _keras_and_ours(dict(KERAS_CASES[case], **_EXACT_BETAS), np.float64)
  for a, b in zip(ours, theirs):
    np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("case", ["default", "amsgrad", "global_clipnorm"])
def test_matches_keras_adam_trajectory_float32_default_betas(case):
  ours, theirs = _keras_and_ours(KERAS_CASES[case], np.float32)
  for a, b in zip(ours, theirs):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("amsgrad", [False, True])
def test_weight_decay_matches_keras_adamw(amsgrad):
  kwargs = dict(_EXACT_BETAS, learning_rate=0.02, weight_decay=0.0625, amsgrad=amsgrad)
  init, target, curvature = _quadratic_problem(1, np.float64)
  ours = [keras.Variable(x) for x in init]
  theirs = [keras.Variable(x) for x in init]
  pairs = ((ours, adam_xla.Adam(**kwargs)), (theirs, keras.optimizers.AdamW(**kwargs)))
  for _ in range(STEPS):
    for variables, opt in pairs:
      with tf.GradientTape() as tape:
        loss = _tf_loss([v.value for v in variables], target, curvature)
      opt.apply_gradients(zip(tape.gradient(loss, [v.value for v in variables]), variables))
  for a, b in zip(ours, theirs):
    np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-9, atol=1e-12)


def test_exclude_from_weight_decay_by_variable_and_name():
  kernel, bias, other = (tf.Variable([1.0, -1.0], name="kernel"),
                         tf.Variable([1.0, -1.0], name="dense_bias"),
                         tf.Variable([1.0, -1.0], name="other"))
  opt = adam_xla.Adam(0.1, weight_decay=0.5)
  opt.exclude_from_weight_decay(var_list=[other], var_names=["bias"])
  zero = tf.zeros([2])
  opt.apply_gradients([(zero, kernel), (zero, bias), (zero, other)])
  # A zero gradient leaves only the decay: var * (1 - lr * weight_decay).
  np.testing.assert_allclose(kernel.numpy(), [0.95, -0.95], rtol=1e-6)
  np.testing.assert_array_equal(bias.numpy(), [1.0, -1.0])
  np.testing.assert_array_equal(other.numpy(), [1.0, -1.0])


@pytest.mark.parametrize("sparse_mode", ["dense", "lazy"])
@pytest.mark.parametrize("jit", [False, True])
def test_apply_if_false_changes_nothing(sparse_mode, jit):
  table = tf.Variable(np.arange(12.0).reshape(6, 2))
  dense = tf.Variable([1.0, 2.0], dtype=tf.float64)
  opt = adam_xla.Adam(0.1, amsgrad=True, weight_decay=0.1, sparse_mode=sparse_mode)

  def step(ids, ok):
    with tf.GradientTape() as tape:
      loss = tf.reduce_sum(tf.gather(table, ids)**2) + tf.reduce_sum(dense**2)
    grads = tape.gradient(loss, [table, dense])
    opt.apply_gradients(zip(grads, [table, dense]), apply_if=ok)

  step = tf.function(step, jit_compile=True) if jit else step
  ids = tf.constant([1, 4, 1])
  step(ids, tf.constant(True))
  state = [
      v.numpy()
      for v in (table, dense, opt.slot(table, "m"), opt.slot(table, "vhat"), opt.slot(dense, "v"))
  ]
  step(ids, tf.constant(False))
  after = [
      v.numpy()
      for v in (table, dense, opt.slot(table, "m"), opt.slot(table, "vhat"), opt.slot(dense, "v"))
  ]
  for a, b in zip(state, after):
    np.testing.assert_array_equal(a, b)
  assert int(opt.iterations.numpy()) == 1
  step(ids, tf.constant(True))
  assert int(opt.iterations.numpy()) == 2
  assert np.all(table.numpy()[[1, 4]] != state[0][[1, 4]])


@pytest.mark.parametrize("jit_compile", [True, False])
def test_jit_compile_switch_gives_the_same_result(jit_compile):
  got, opt = _run_adam({"learning_rate": 0.02, "amsgrad": True, "jit_compile": jit_compile},
                       "eager", np.float64)
  want, _ = _run_reference({"learning_rate": 0.02, "amsgrad": True}, np.float64)
  assert opt.jit_compile is jit_compile
  for g, w in zip(got, want):
    np.testing.assert_allclose(g, w, rtol=1e-6, atol=1e-9)


def test_keras_docs_usage_example():
  opt = adam_xla.Adam(learning_rate=0.1)
  var1 = tf.Variable(10.0)
  loss = lambda: (var1**2) / 2.0
  step_count = opt.minimize(loss, [var1]).numpy()
  assert step_count == 1
  np.testing.assert_allclose(var1.numpy(), 9.9, rtol=1e-6)


def test_first_step_is_minus_lr_times_sign():
  rng = np.random.default_rng(3)
  grad = rng.normal(size=[6])
  var = tf.Variable(np.zeros(6))
  adam_xla.Adam(learning_rate=0.3).apply_gradients([(tf.constant(grad), var)])
  np.testing.assert_allclose(var.numpy(), -0.3 * np.sign(grad), rtol=1e-4)


def test_minimize_with_tape_and_callable_var_list():
  var = tf.Variable([1.0, -2.0])
  opt = adam_xla.Adam(0.1)
  with tf.GradientTape() as tape:
    loss = tf.reduce_sum(var**2)
  opt.minimize(loss, lambda: [var], tape=tape)
  np.testing.assert_allclose(var.numpy(), [0.9, -1.9], rtol=1e-6)


def test_minimize_tensor_loss_without_tape_raises():
  var = tf.Variable(1.0)
  with pytest.raises(ValueError, match="`tape` is required"):
    adam_xla.Adam().minimize(var * 2.0, [var])


def test_none_gradient_is_skipped_with_warning():
  used, unused = tf.Variable(1.0, name="used"), tf.Variable(5.0, name="unused")
  opt = adam_xla.Adam(0.1)
  with pytest.warns(UserWarning, match="unused"):
    opt.apply_gradients([(tf.constant(1.0), used), (None, unused)])
  assert unused.numpy() == 5.0
  np.testing.assert_allclose(used.numpy(), 0.9, rtol=1e-6)


def test_all_gradients_none_raises():
  var = tf.Variable(1.0, name="lonely")
  with pytest.raises(ValueError, match="no gradients provided.*lonely"):
    adam_xla.Adam().apply_gradients([(None, var)])


def test_keras_model_variables_and_named_slots():
  model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2, name="head")])
  opt = adam_xla.Adam(amsgrad=True)
  x, y = tf.ones([4, 3]), tf.zeros([4, 2])
  with tf.GradientTape() as tape:
    loss = tf.reduce_mean(tf.square(model(x) - y))
  opt.apply_gradients(zip(tape.gradient(loss, model.trainable_variables),
                          model.trainable_variables))
  kernel = model.trainable_variables[0]
  assert opt.slot_names == ("m", "v", "vhat")
  m = opt.slot(kernel, "m")
  assert m.shape == kernel.shape and np.any(m.numpy() != 0)
  assert opt.slot(kernel.value, "v") is opt.slot(kernel, "v")
  with pytest.raises(KeyError, match="unknown slot"):
    opt.slot(kernel, "momentum")
  with pytest.raises(KeyError, match="no slots"):
    opt.slot(tf.Variable(1.0), "m")


def test_two_variables_with_the_same_name_get_separate_slots():
  a, b = tf.Variable(1.0, name="w"), tf.Variable(2.0, name="w")
  opt = adam_xla.Adam(0.1)
  opt.apply_gradients([(tf.constant(1.0), a), (tf.constant(-1.0), b)])
  assert opt.slot(a, "m") is not opt.slot(b, "m")
  np.testing.assert_allclose([a.numpy(), b.numpy()], [0.9, 2.1], rtol=1e-6)


def _hlo(fn, *args):
  return fn.experimental_get_compiler_ir(*args)(stage="hlo")


def test_update_is_inside_the_compiled_program():
  var = tf.Variable(tf.ones([3, 2]))
  opt = adam_xla.Adam(0.1, amsgrad=True)

  @tf.function(jit_compile=True)
  def step():
    with tf.GradientTape() as tape:
      loss = tf.reduce_sum(var**2)
    opt.apply_gradients(zip(tape.gradient(loss, [var]), [var]))

  step()
  hlo = _hlo(step)
  layout = re.search(r"entry_computation_layout=\{\((.*?)\)->\((.*?)\)\}", hlo)
  params, outputs = layout.group(1), layout.group(2)
  # Inputs: var, iterations, learning rate, m, v, vhat; outputs: the five updated ones.
  assert params.count("f32[3,2]") == 4 and "s64[]" in params
  assert outputs.count("f32[3,2]") == 4 and "s64[]" in outputs
  assert "sqrt(" in hlo and "maximum(" in hlo
  # Every output is written back in place into the variable it came from.
  aliases = re.search(r"input_output_alias=\{(.*?)\}, entry", hlo).group(1)
  assert aliases.count("may-alias") == 5


def test_changing_learning_rate_and_schedule_values_never_retraces():
  init, target, curvature = _quadratic_problem(2, np.float64)
  variables = [tf.Variable(x) for x in init]
  factor = tf.Variable(1.0, dtype=tf.float64)
  opt = adam_xla.Adam(learning_rate=lambda: 0.02 * factor)
  traces = []

  @tf.function(jit_compile=True)
  def step():
    traces.append(1)
    with tf.GradientTape() as tape:
      loss = _tf_loss(variables, target, curvature)
    opt.apply_gradients(zip(tape.gradient(loss, variables), variables))

  opt.build(variables)  # state created up front: a step that creates variables traces twice
  params = [np.array(x) for x in init]
  ref = numpy_adam.NumpyAdam(learning_rate=lambda s: 0.02 * (1.0 if s < 5 else 0.25))
  for i in range(10):
    factor.assign(1.0 if i < 5 else 0.25)
    step()
    ref.step(params, _numpy_grads(params, target, curvature))
  assert len(traces) == 1
  for v, p in zip(variables, params):
    np.testing.assert_allclose(v.numpy(), p, rtol=1e-6)


def test_assigning_numeric_learning_rate_reaches_compiled_step():
  var = tf.Variable([0.0, 0.0])
  opt = adam_xla.Adam(0.1)
  traces = []

  @tf.function(jit_compile=True)
  def step(grad):
    traces.append(1)
    opt.apply_gradients([(grad, var)])

  opt.build([var])
  step(tf.constant([1.0, -1.0]))
  opt.learning_rate = 0.5
  before = var.numpy()
  step(tf.constant([1.0, -1.0]))
  assert len(traces) == 1
  assert isinstance(opt.learning_rate, tf.Variable)
  np.testing.assert_allclose(opt.learning_rate.numpy(), 0.5)
  # For a constant gradient the bias-corrected m / sqrt(v) is exactly 1 (up to epsilon), so
  # each step moves by the learning rate: 0.1 first, then the new 0.5.
  np.testing.assert_allclose(before, [-0.1, 0.1], rtol=1e-5)
  np.testing.assert_allclose(before - var.numpy(), [0.5, -0.5], rtol=1e-5)
  with pytest.raises(ValueError, match="learning_rate"):
    opt.learning_rate = -1.0


# ---- Sparse gradients ---------------------------------------------------------------------

ROWS, DIM = 12, 3


def _sparse_batches(seed, steps):
  rng = np.random.default_rng(seed)
  # Small batches with repeated ids, so that some rows are absent from each step.
  return [rng.integers(0, ROWS, size=5) for _ in range(steps)]


def _embedding_problem(seed):
  rng = np.random.default_rng(seed)
  return rng.normal(size=[ROWS, DIM]), rng.normal(size=[5, DIM])


def _run_sparse(opt_kwargs, mode, batches, seed=0):
  table0, weights = _embedding_problem(seed)
  table = tf.Variable(table0)
  opt = adam_xla.Adam(**opt_kwargs)
  kinds = []

  def step(ids):
    with tf.GradientTape() as tape:
      rows = tf.gather(table, ids)
      loss = tf.reduce_sum(rows * weights) + 0.5 * tf.reduce_sum(tf.square(rows))
    (grad,) = tape.gradient(loss, [table])
    kinds.append(type(grad))
    opt.apply_gradients([(grad, table)])

  if mode != "eager":
    step = tf.function(step, jit_compile=(mode == "jit"))
  snapshots = []
  for ids in batches:
    step(tf.constant(ids))
    snapshots.append(table.numpy())
  assert all(k is tf.IndexedSlices for k in kinds)
  return snapshots


def _reference_sparse(ref_kwargs, batches, lazy, seed=0):
  table0, weights = _embedding_problem(seed)
  params = [table0.copy()]
  ref = numpy_adam.NumpyAdam(lazy=lazy, **ref_kwargs)
  snapshots = []
  for ids in batches:
    grad = np.zeros_like(params[0])
    np.add.at(grad, ids, weights + params[0][ids])
    ref.step(params, [grad], touched_rows=[ids])
    snapshots.append(params[0].copy())
  return snapshots


SPARSE_OPTIONS = {
    "plain": ({"learning_rate": 0.05}, {"learning_rate": 0.05}),
    "amsgrad_clipnorm": ({"learning_rate": 0.05, "amsgrad": True, "clipnorm": 1.0},
                         {"learning_rate": 0.05, "amsgrad": True, "clipnorm": 1.0}),
    "global_clipnorm_clipvalue":
        ({"learning_rate": 0.05, "global_clipnorm": 1.5,
          "clipvalue": 0.8}, {"learning_rate": 0.05, "global_clipnorm": 1.5, "clipvalue": 0.8}),
}


@pytest.mark.parametrize("sparse_mode", ["dense", "lazy"])
@pytest.mark.parametrize("mode", ["eager", "jit"])
@pytest.mark.parametrize("case", sorted(SPARSE_OPTIONS))
def test_sparse_modes_match_their_references(case, mode, sparse_mode):
  ours, ref = SPARSE_OPTIONS[case]
  batches = _sparse_batches(4, 12)
  got = _run_sparse(dict(ours, sparse_mode=sparse_mode), mode, batches)
  want = _reference_sparse(ref, batches, lazy=(sparse_mode == "lazy"))
  for g, w in zip(got, want):
    np.testing.assert_allclose(g, w, rtol=1e-6, atol=1e-9)


def test_default_sparse_mode_equals_dense_gradient_updates():
  """Rows absent from a batch keep moving: the documented dense behaviour."""
  batches = _sparse_batches(5, 8)
  sparse_run = _run_sparse({"learning_rate": 0.05}, "eager", batches)
  table0, weights = _embedding_problem(0)
  table = tf.Variable(table0)
  opt = adam_xla.Adam(0.05)
  for ids, snapshot in zip(batches, sparse_run):
    with tf.GradientTape() as tape:
      rows = tf.gather(table, ids)
      loss = tf.reduce_sum(rows * weights) + 0.5 * tf.reduce_sum(tf.square(rows))
    grad = tf.convert_to_tensor(tape.gradient(loss, table))
    opt.apply_gradients([(grad, table)])
    np.testing.assert_allclose(table.numpy(), snapshot, rtol=1e-12)
  absent = sorted(set(range(ROWS)) - set(batches[-1]))
  moved = [r for r in absent if np.any(sparse_run[-1][r] != sparse_run[-2][r])]
  assert moved, "some row absent from the last batch should still have moved"


def test_lazy_mode_leaves_absent_rows_untouched():
  batches = _sparse_batches(6, 6)
  snapshots = _run_sparse({"learning_rate": 0.05, "sparse_mode": "lazy"}, "jit", batches)
  absent = sorted(set(range(ROWS)) - set(batches[-1]))
  assert absent
  np.testing.assert_array_equal(snapshots[-1][absent], snapshots[-2][absent])


def _sparse_step(opt, table, indices, where):
  grad = tf.IndexedSlices(tf.ones([len(indices), 2], table.dtype), tf.constant(indices),
                          tf.constant([3, 2]))
  if where == "eager":
    return opt.apply_gradients([(grad, table)])
  fn = tf.function(
      lambda v, i: opt.apply_gradients([(tf.IndexedSlices(v, i, grad.dense_shape), table)]),
      jit_compile=True)
  return fn(grad.values, grad.indices)


@pytest.mark.parametrize("sparse_mode", ["dense", "lazy"])
@pytest.mark.parametrize("indices", [[1, 3], [-1, 1], [7, 7]])
def test_out_of_range_indices_are_refused_eagerly(sparse_mode, indices):
  """Eagerly a bad id raises a ValueError naming the variable and the rows, before any change
  (without the check dense mode drops negative ids and lazy mode raises a raw TF error)."""
  table = tf.Variable(np.zeros((3, 2), np.float32), name="table")
  opt = adam_xla.Adam(0.1, sparse_mode=sparse_mode)
  with pytest.raises(ValueError, match=r"'table:0' has index -?\d+, outside the variable's "
                     r"rows \[0, 3\)"):
    _sparse_step(opt, table, indices, "eager")
  np.testing.assert_array_equal(table.numpy(), 0.0)
  assert int(opt.iterations.numpy()) == 0


@pytest.mark.parametrize("sparse_mode", ["dense", "lazy"])
@pytest.mark.parametrize("indices", [[1, 3], [-1, 1], [1, 9, -4, 1]])
def test_out_of_range_indices_are_ignored_under_xla(sparse_mode, indices):
  """Inside a compiled step ids are not checked (the sparse_mode docstring): out-of-range rows
  are ignored, and the others get exactly the update of the valid ids alone."""
  results = []
  for ids in (indices, [i for i in indices if 0 <= i < 3]):
    table = tf.Variable(np.arange(6.0, dtype=np.float32).reshape(3, 2), name="table")
    _sparse_step(adam_xla.Adam(0.1, sparse_mode=sparse_mode), table, ids, "xla")
    results.append(table.numpy())
  np.testing.assert_array_equal(results[0], results[1])


@pytest.mark.parametrize("clip", ["clipnorm", "global_clipnorm"])
def test_out_of_range_indices_are_left_out_of_dense_mode_clipping_under_xla(clip):
  """As the dense gradient drops them, so do its norms: the clipped step of the valid ids."""
  results = []
  for ids in ([1, 9, -4, 1], [1, 1]):
    table = tf.Variable(np.arange(6.0, dtype=np.float32).reshape(3, 2), name="table")
    _sparse_step(adam_xla.Adam(0.1, **{clip: 0.5}), table, ids, "xla")
    results.append(table.numpy())
  np.testing.assert_array_equal(results[0], results[1])


def test_gradient_of_the_variables_dtype_and_shape_is_passed_through_untouched():
  """No cast or copy is added for a gradient that is already right (the common case)."""
  from adam_xla import gradients  # pylint: disable=import-outside-toplevel
  var = tf.Variable(np.zeros((3, 2), np.float32))
  dense = tf.ones([3, 2])
  sparse = tf.IndexedSlices(tf.ones([2, 2]), tf.constant([0, 2]), tf.constant([3, 2]))
  (checked_dense, checked), _ = gradients.accepted([(dense, var), (sparse, var)])
  assert checked_dense is dense
  assert checked.values is sparse.values and checked.indices is sparse.indices


@pytest.mark.parametrize("option", ["clipnorm", "global_clipnorm"])
def test_norm_clipping_adds_only_a_scalar_conditional_to_the_program(option):
  """The overflow fallback of the norm is a conditional that returns the clip factors: the
  large-tensor work of the step stays what it was (one reduction, then the fused update)."""
  var = tf.Variable(tf.ones([64, 32]))
  opt = adam_xla.Adam(0.1, **{option: 1.0})

  @tf.function(jit_compile=True)
  def step(grad):
    opt.apply_gradients([(grad, var)])

  grad = tf.ones([64, 32])
  step(grad)
  hlo = step.experimental_get_compiler_ir(grad)(stage="optimized_hlo")
  entry = hlo[hlo.index("ENTRY"):]
  conditionals = re.findall(r"= (\S+) conditional\(", entry)
  assert conditionals == ["(f32[])"], conditionals


# ---- Dense mode without a dense gradient ---------------------------------------------------

_DUPLICATES = [3, 7, 3, 3, 0, 7, 11]
DENSE_MODE_CASES = {
    "duplicates": (_DUPLICATES, {}),
    "empty": ([], {}),
    "amsgrad": (_DUPLICATES, {"amsgrad": True}),
    "weight_decay": (_DUPLICATES, {"weight_decay": 0.1}),
    "amsgrad_weight_decay_clipnorm":
        (_DUPLICATES, {"amsgrad": True, "weight_decay": 0.1, "clipnorm": 0.5}),
}


@pytest.mark.parametrize("apply_if", [False, True], ids=["always", "apply_if"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", sorted(DENSE_MODE_CASES))
def test_compiled_dense_mode_equals_the_update_of_the_densified_gradient(case, dtype, apply_if):
  """IndexedSlices in dense mode, compiled, against the same optimizer given the dense
  gradient (TF's densification). With apply_if, the middle step is skipped by both."""
  ids, kwargs = DENSE_MODE_CASES[case]
  rng = np.random.default_rng(8)
  table0 = rng.normal(size=[ROWS, DIM]).astype(dtype)
  tables = [tf.Variable(table0), tf.Variable(table0)]
  opts = [adam_xla.Adam(0.05, **kwargs) for _ in tables]
  for opt, table in zip(opts, tables):
    opt.build([table])
  update = tf.function(lambda opt, grad, var, ok: opt.apply_gradients([(grad, var)], apply_if=ok),
                       jit_compile=True)
  for step in range(3):
    grad = tf.IndexedSlices(tf.constant(rng.normal(size=[len(ids), DIM]).astype(dtype)),
                            tf.constant(ids, tf.int32), tf.constant([ROWS, DIM]))
    ok = tf.constant(step != 1) if apply_if else None
    before = [t.numpy() for t in (tables[0], opts[0].slot(tables[0], "v"))]
    update(opts[0], grad, tables[0], ok)
    update(opts[1], tf.convert_to_tensor(grad), tables[1], ok)
    if apply_if and step == 1:
      np.testing.assert_array_equal(tables[0].numpy(), before[0])
      np.testing.assert_array_equal(opts[0].slot(tables[0], "v").numpy(), before[1])
    for name in ("var",) + opts[0].slot_names:
      got, want = ((t if name == "var" else o.slot(t, name)).numpy() for t, o in zip(tables, opts))
      # Duplicates are summed in another order than TF's densification: rounding only.
      tolerance = {np.float32: (1e-6, 1e-7), np.float64: (1e-12, 1e-15)}[dtype]
      np.testing.assert_allclose(got, want, *tolerance, err_msg=f"step {step}, {name}")
  assert int(opts[0].iterations.numpy()) == (2 if apply_if else 3)
  assert np.all(tables[0].numpy()[ids] != table0[ids])


_HLO_ENTRY_LINE = re.compile(r"^\s*(?:ROOT )?%(\S+) = (\(.*?\)|\S+) ([a-z][\w-]*)\(([^)]*)\)(.*)$")


def _entry_kernels(hlo):
  """(name, shape, opcode or fusion root, operand shapes, attributes) of each instruction of
  the entry computation of optimized HLO text."""
  roots, current, lines = {}, None, {}
  for line in hlo.splitlines():
    header = re.match(r"^(ENTRY )?%(\S+) .*\{$", line)
    if header:
      current = "ENTRY" if header.group(1) else header.group(2)
      lines[current] = []
      continue
    match = _HLO_ENTRY_LINE.match(line)
    if match and current:
      lines[current].append(match.groups())
      if line.lstrip().startswith("ROOT"):
        roots[current] = match.group(3)
  shapes = {name: shape for name, shape, *_ in lines["ENTRY"]}
  kernels = []
  for name, shape, opcode, operands, attributes in lines["ENTRY"]:
    called = re.search(r"calls=%([\w.-]+)", attributes)
    kind = roots.get(called.group(1), opcode) if called else opcode
    operand_shapes = [shapes.get(o.strip().lstrip("%"), "") for o in operands.split(",")]
    kernels.append((name, shape, kind, operand_shapes, attributes))
  return kernels


@pytest.mark.parametrize("kwargs,bytes_per_param", [({}, 32), ({"weight_decay": 0.1}, 32),
                                                    ({"amsgrad": True}, 44)])
def test_compiled_dense_mode_builds_no_dense_gradient(kwargs, bytes_per_param, monkeypatch):
  """The dense-mode update of an IndexedSlices gradient, as XLA compiles it: no table-sized
  zero-filled gradient and no segment sum into one. The table-sized work is the moments'
  decay (one read and one write each), the batch rows' terms scatter-added into them in
  place, and the variable's step (reading the variable and the new moments): 32 bytes per
  float32 parameter, against 44 for densifying first (amsgrad: one more pass, for vhat).
  This is the GPU and TPU path; on CPU the rows kernel replaces it (cpu_kernel_test)."""
  monkeypatch.setenv(cpu_kernel.ENV_SWITCH, "0")
  rows, dim = 1000, 16
  table = tf.Variable(tf.zeros([rows, dim]))
  opt = adam_xla.Adam(0.1, **kwargs)

  @tf.function(jit_compile=True)
  def step(values, ids, ok):
    opt.apply_gradients([(tf.IndexedSlices(values, ids, tf.constant([rows, dim])), table)],
                        apply_if=ok)

  args = (tf.ones([64, dim]), tf.range(64) % 7, tf.constant(True))
  step(*args)
  table_shape = f"f32[{rows},{dim}]"
  moved, scatters = 0, 0
  for name, shape, kind, operand_shapes, attributes in _entry_kernels(
      step.experimental_get_compiler_ir(*args)(stage="optimized_hlo")):
    writes = shape.startswith(table_shape)
    reads = sum(s.startswith(table_shape) for s in operand_shapes)
    if kind in ("parameter", "constant", "bitcast", "tuple",
                "get-tuple-element") or not (writes or reads):
      continue
    assert kind not in ("broadcast", "copy"), (name, kind)  # a zero-fill, a copy of a table
    assert 'op_type="UnsortedSegmentSum"' not in attributes, name
    if kind == "scatter":
      scatters += 1  # in place: only the batch's rows
    else:
      moved += 4 * (reads + writes)
  assert scatters == 2
  assert moved == bytes_per_param


# ---- Checkpoints and configuration ---------------------------------------------------------


def _train(opt, variables, target, curvature, steps):
  step = _make_step(opt, variables, target, curvature, "function")
  for _ in range(steps):
    step()


@pytest.mark.parametrize("amsgrad", [False, True])
def test_checkpoint_resume_into_fresh_optimizer_matches_uninterrupted(tmp_path, amsgrad):
  init, target, curvature = _quadratic_problem(7, np.float32)
  straight = [tf.Variable(x) for x in init]
  _train(adam_xla.Adam(0.05, amsgrad=amsgrad), straight, target, curvature, 20)

  first = [tf.Variable(x) for x in init]
  opt = adam_xla.Adam(0.05, amsgrad=amsgrad)
  _train(opt, first, target, curvature, 10)
  path = tf.train.Checkpoint(optimizer=opt, variables=first).save(str(tmp_path / "ckpt"))

  resumed = [tf.Variable(np.zeros_like(x)) for x in init]
  fresh = adam_xla.Adam(0.05, amsgrad=amsgrad)
  status = tf.train.Checkpoint(optimizer=fresh, variables=resumed).restore(path)
  fresh.build(resumed)  # slots created after the restore request receive the saved values
  status.assert_consumed()
  assert int(fresh.iterations.numpy()) == 10
  np.testing.assert_array_equal(
      fresh.slot(resumed[0], "v").numpy(),
      opt.slot(first[0], "v").numpy())
  _train(fresh, resumed, target, curvature, 10)
  for a, b in zip(resumed, straight):
    np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_checkpoint_restores_into_built_optimizer(tmp_path):
  var = tf.Variable([1.0, 2.0])
  opt = adam_xla.Adam(0.1)
  opt.apply_gradients([(tf.constant([1.0, 1.0]), var)])
  path = tf.train.Checkpoint(optimizer=opt).save(str(tmp_path / "ckpt"))
  saved_m = opt.slot(var, "m").numpy()
  opt.apply_gradients([(tf.constant([5.0, 5.0]), var)])
  tf.train.Checkpoint(optimizer=opt).restore(path).assert_consumed()
  assert int(opt.iterations.numpy()) == 1
  np.testing.assert_array_equal(opt.slot(var, "m").numpy(), saved_m)


def test_checkpoint_keys_are_readable(tmp_path):
  model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1, name="head")])
  opt = adam_xla.Adam()
  opt.build(model.trainable_variables)
  path = tf.train.Checkpoint(optimizer=opt).save(str(tmp_path / "ckpt"))
  names = [name for name, _ in tf.train.list_variables(path)]
  assert any("head.Skernel.Sm" in n for n in names), names
  assert any("_iterations" in n for n in names), names
  # The learning rate is configuration, not state: a resumed run uses its own.
  assert not any("learning_rate" in n for n in names), names


def test_config_round_trip_with_schedule_is_json_serializable():
  opt = adam_xla.Adam(_SCHEDULE, beta_1=0.8, beta_2=0.99, epsilon=0.1, amsgrad=True, name="my_adam",
                      sparse_mode="lazy", clipvalue=2.0, global_clipnorm=1.0)
  config = opt.get_config()
  json.dumps(config)
  clone = adam_xla.Adam.from_config(config)
  assert clone.get_config() == config
  clone.iterations.assign(5)
  assert float(clone.learning_rate) == pytest.approx(0.025)  # the schedule at step 5
  assert (clone.name, clone.amsgrad, clone.sparse_mode) == ("my_adam", True, "lazy")


def test_config_round_trip_after_build_reports_current_rate():
  opt = adam_xla.Adam(0.01, clipnorm=1.0)
  opt.build([tf.Variable(1.0)])
  opt.learning_rate = 0.003
  config = opt.get_config()
  assert config["learning_rate"] == pytest.approx(0.003)
  assert adam_xla.Adam.from_config(config).get_config() == config


# ---- Bad arguments --------------------------------------------------------------------------

BAD_ARGUMENTS = [
    ({"foo": 1}, TypeError, r"unexpected keyword argument.*'foo'.*clipnorm"),
    ({"use_ema": True}, TypeError, r"'use_ema'.*accepted.*weight_decay"),
    ({"weight_decay": -0.1}, ValueError, r"`weight_decay`.*>= 0"),
    ({"clipnorm": 1.0, "global_clipnorm": 1.0}, ValueError, r"clipnorm.*global_clipnorm"),
    ({"learning_rate": -0.1}, ValueError, r"`learning_rate`.*\[0.0, inf\)"),
    ({"learning_rate": float("nan")}, ValueError, r"`learning_rate`"),
    ({"learning_rate": "0.1"}, TypeError, r"`learning_rate` must be.*LearningRateSchedule"),
    ({"beta_1": 1.0}, ValueError, r"`beta_1`.*\[0.0, 1.0\)"),
    ({"beta_2": -0.5}, ValueError, r"`beta_2`"),
    ({"beta_1": None}, TypeError, r"`beta_1`"),
    ({"epsilon": -1e-7}, ValueError, r"`epsilon`"),
    ({"epsilon": 0.0}, ValueError, r"`epsilon` must be a finite number in \(0.0, inf\); got 0.0"),
    ({"amsgrad": "yes"}, TypeError, r"`amsgrad` must be True or False"),
    ({"sparse_mode": "sparse"}, ValueError, r"`sparse_mode`.*'dense', 'lazy'"),
    ({"clipnorm": 0.0}, ValueError, r"`clipnorm`.*> 0"),
    ({"clipvalue": -1.0}, ValueError, r"`clipvalue`"),
    ({"global_clipnorm": "1"}, ValueError, r"`global_clipnorm`"),
    ({"name": ""}, TypeError, r"`name`"),
    ({"jit_compile": 1}, TypeError, r"`jit_compile` must be True or False"),
]


@pytest.mark.parametrize("kwargs,error,message", BAD_ARGUMENTS)
def test_bad_arguments_raise_clear_errors(kwargs, error, message):
  with pytest.raises(error, match=message):
    adam_xla.Adam(**kwargs)


@pytest.mark.parametrize("dtype", [tf.bfloat16, tf.float16])
def test_low_precision_variables_are_refused_with_advice(dtype):
  var = tf.Variable(tf.ones([2], dtype), name="half")
  with pytest.raises(TypeError, match="'half.*float32 master weights.*mixed_bfloat16"):
    adam_xla.Adam().apply_gradients([(tf.ones([2], dtype), var)])


if __name__ == "__main__":
  pytest_main.main(__file__)
