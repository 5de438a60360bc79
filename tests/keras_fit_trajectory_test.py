"""`model.fit` with adam_xla.Adam: whole training trajectories, not single steps.

Checked against:

1. `keras.optimizers.Adam` compiled into the same model and fit on the same data (defaults,
   amsgrad, the three clip options, weight decay with an exclusion, a learning-rate schedule,
   a beta_1 that changes during training), with fit's program and the optimizer's each
   compiled by XLA or not.
2. The float64 NumPy reference (tests/numpy_adam.py), step by step, for every option, on
   models whose gradients are `tf.IndexedSlices` (a Keras Embedding, and `tf.gather` in a
   custom layer) with repeated ids, in both sparse modes: fit's weights after each step, and
   which embedding rows a step moves.
3. The same fit on one device, under MirroredStrategy on 2 and on 4 logical CPUs: equal
   weights, and every replica's copy of a slot identical.
4. Mixed float16, where Keras wraps the optimizer in its LossScaleOptimizer: the same losses
   and weights as with keras.optimizers.Adam, and the inner optimizer's step count.
5. XLA's dumped programs: with `model.compile(jit_compile=True)` the update is in fit's own
   program (the model's dot and adam_xla's one-pass CPU kernel in one module).

The CPU is split into four logical devices before TensorFlow starts, for the MirroredStrategy
tests; they are skipped when another module in the same process started TensorFlow first.
"""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tensorflow as tf

from tests import logical_cpus

_CPUS = logical_cpus.split(4)  # before anything starts the TF runtime

# pylint: disable=g-direct-tensorflow-import,wrong-import-position
import keras
from tensorflow.python.distribute import values as values_lib

import adam_xla
from adam_xla import cpu_kernel
from adam_xla import slots
from tests import numpy_adam
from tests import pytest_main

needs_four_cpus = logical_cpus.skip_unless(4)
# One strategy per replica count for the module. TF keys collective all-reduce groups per
# process, so strategies of two sizes that both use it collide ("joining a group with size 4,
# but that group has size 2"): the 4-replica one reduces to one device instead.
STRATEGIES = {
    2: tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"]),
    4: tf.distribute.MirroredStrategy(
        [f"/cpu:{i}" for i in range(4)],
        cross_device_ops=tf.distribute.ReductionToOneDevice("/cpu:0")),
} if _CPUS >= 4 else {}

# Keras casts Python betas through float32; these and the rates below are exact in float32,
# so that the two optimizers (and the float64 reference) start from the same numbers.
EXACT = {"beta_1": 0.875, "beta_2": 1 - 2.0**-10}
LR = 2.0**-6


def _schedule(rate):
  """rate for steps 0 and 1, rate / 2 for steps 2 and 3, ..."""
  return keras.optimizers.schedules.ExponentialDecay(rate, 2, 0.5, staircase=True)


class _SetVariable(keras.callbacks.Callback):
  """Assigns values[step] to `variable` before each training step (a hyperparameter that
  changes during training)."""

  def __init__(self, variable, values):
    super().__init__()
    self._variable, self._values = variable, values
    self._step = 0

  def on_train_batch_begin(self, batch, logs=None):
    self._variable.assign(self._values[min(self._step, len(self._values) - 1)])
    self._step += 1


class _RecordWeights(keras.callbacks.Callback):
  """Keeps the model's weights after each training step."""

  def __init__(self):
    super().__init__()
    self.weights = []

  def on_train_batch_end(self, batch, logs=None):
    self.weights.append([w.numpy() for w in self.model.trainable_weights])


def _assert_weights_close(got, expected, rtol=1e-5, atol=1e-6, what=""):
  assert len(got) == len(expected)
  for i, (g, e) in enumerate(zip(got, expected)):
    np.testing.assert_allclose(g, e, rtol=rtol, atol=atol, err_msg=f"{what} weight {i}")


def _max_difference(a, b):
  return max(float(np.max(np.abs(x - y))) for x, y in zip(a, b))


def _optimizer_arguments(options, beta_1_values, keras_optimizer=False):
  """The optimizer's keyword arguments for `options` (a value of KERAS_OPTIONS or
  REFERENCE_OPTIONS), and the callbacks these need.

  A learning rate "schedule" is `_schedule(4 * LR)`. A beta_1 "variable" is a variable that a
  callback sets to beta_1_values[step] before each step: adam_xla reads it through a
  zero-argument callable; Keras gets the variable itself, since Keras 3.15 cannot call a
  callable beta (its update casts beta_1 to a tensor).
  """
  kwargs = {"learning_rate": LR, **EXACT, **options}
  callbacks = []
  if kwargs["learning_rate"] == "schedule":
    kwargs["learning_rate"] = _schedule(4 * LR)
  if kwargs["beta_1"] == "variable":
    beta_1 = tf.Variable(beta_1_values[0])
    callbacks.append(_SetVariable(beta_1, beta_1_values))
    kwargs["beta_1"] = beta_1 if keras_optimizer else (lambda: beta_1)
  return kwargs, callbacks


# ---- 1. fit against keras.optimizers.Adam ------------------------------------------------

_X = np.random.default_rng(0).normal(size=(24, 5)).astype(np.float32)
_Y = np.random.default_rng(1).normal(size=(24, 3)).astype(np.float32)
_BETA_1_VALUES = [0.875, 0.875, 0.75, 0.5, 0.5, 0.9375]  # per step; exact in float32


def _mlp(seed=0):
  keras.utils.set_random_seed(seed)
  return keras.Sequential([
      keras.Input((5,)),
      keras.layers.Dense(8, activation="tanh", bias_initializer="random_normal"),
      keras.layers.Dense(3, bias_initializer="random_normal")
  ])


# name: the optimizer's keyword arguments, "schedule" and "variable" as `_optimizer_arguments`
# says. With weight decay, biases are excluded from it. The clip limits are such that some
# gradients are clipped and others not.
KERAS_OPTIONS = {
    "defaults": {},
    # A short second-moment memory, so that v falls within a few steps and amsgrad matters.
    "amsgrad": {"beta_2": 0.5, "amsgrad": True},
    "clipnorm": {"clipnorm": 1.0},
    "clipvalue": {"clipvalue": 0.5},
    "global_clipnorm": {"global_clipnorm": 2.0},
    "weight_decay": {"weight_decay": 0.5},
    "schedule": {"learning_rate": "schedule"},
    "callable_beta_1": {"beta_1": "variable"},
}
_keras_results = {}


def _fit_mlp(optimizer_class, option, compile_kwargs, opt_kwargs=None):
  """The model, its optimizer and the loss History after fitting `_mlp()` for 2 epochs of 3
  batches."""
  kwargs, callbacks = _optimizer_arguments(KERAS_OPTIONS[option], _BETA_1_VALUES,
                                           keras_optimizer=optimizer_class is keras.optimizers.Adam)
  initial = _mlp().get_weights()
  model = _mlp(seed=1)
  model.set_weights(initial)
  optimizer = optimizer_class(**kwargs, **(opt_kwargs or {}))
  if option == "weight_decay":
    optimizer.exclude_from_weight_decay(var_names=["bias"])
  model.compile(optimizer=optimizer, loss="mse", **compile_kwargs)
  history = model.fit(_X, _Y, batch_size=8, epochs=2, shuffle=False, verbose=0, callbacks=callbacks)
  return model, optimizer, history.history["loss"]


def _keras_fit(option):
  """Weights and losses of the same fit with keras.optimizers.Adam, run eagerly (the same
  arithmetic as its graph, and quicker here than tracing it)."""
  if option not in _keras_results:
    model, _, losses = _fit_mlp(keras.optimizers.Adam, option, {"run_eagerly": True})
    _keras_results[option] = model.get_weights(), losses
  return _keras_results[option]


# What XLA compiles, as (model.compile's jit_compile, Adam's jit_compile). "update": fit's step
# is a graph (Keras' choice on CPU) that runs the update as adam_xla's own XLA program, with
# its CPU kernel; "none": the update as TensorFlow ops; "fit": the update inlined into fit's
# XLA program.
PROGRAMS = {"update": (False, True), "none": (False, False), "fit": (True, True)}
_KERAS_CASES = ([(option, program) for option in KERAS_OPTIONS for program in ("update", "none")] +
                [("defaults", "fit"), ("weight_decay", "fit")])


@pytest.mark.parametrize("option,program", _KERAS_CASES)
def test_fit_follows_keras_adam(option, program):
  """Weights and losses after 6 steps as keras.optimizers.Adam's with the same arguments."""
  model_jit, jit_compile = PROGRAMS[program]
  model, optimizer, losses = _fit_mlp(adam_xla.Adam, option, {"jit_compile": model_jit},
                                      {"jit_compile": jit_compile})
  weights = model.get_weights()
  keras_weights, keras_losses = _keras_fit(option)
  _assert_weights_close(weights, keras_weights, what=option)
  np.testing.assert_allclose(losses, keras_losses, rtol=1e-5)
  assert int(optimizer.iterations.numpy()) == 6
  assert _max_difference(weights, _mlp().get_weights()) > 0.01  # it trained
  # The option changed the trajectory, so that the comparison tests it.
  if option == "amsgrad":  # v fell below its running maximum somewhere
    assert any(
        np.any(optimizer.slot(w, "vhat").numpy() > optimizer.slot(w, "v").numpy())
        for w in model.trainable_weights)
  elif option != "defaults":
    assert _max_difference(keras_weights, _keras_fit("defaults")[0]) > 1e-4


# ---- 2. fit against the float64 NumPy reference, with sparse gradients ------------------

VOCABULARY, WIDTH, IDS_PER_EXAMPLE, BATCH = 16, 4, 3, 8
# The rows each step's batch draws its ids from (24 ids from 8 rows: with repeats): rows 0-7,
# then 4-11, then 0-3 and 8-11. Rows 0-3 are absent from step 2, rows 4-7 from step 3, and
# rows 12-15 from every step.
_STEP_ROWS = [np.arange(0, 8), np.arange(4, 12), np.r_[0:4, 8:12]]
_IDS = np.concatenate([
    np.random.default_rng(2).choice(rows, size=(BATCH, IDS_PER_EXAMPLE)) for rows in _STEP_ROWS
]).astype(np.int32)
_TARGETS = np.random.default_rng(3).normal(size=(len(_IDS), 2)).astype(np.float32)


class _GatherSum(keras.layers.Layer):
  """The sum of the rows `ids` of a table, by tf.gather on the layer's weight."""

  def build(self, input_shape):
    self.table = self.add_weight(shape=(VOCABULARY, WIDTH), initializer="random_normal",
                                 name="table")

  def call(self, ids):
    return tf.reduce_sum(tf.gather(self.table, ids), axis=1)


def _embedding_model(kind, seed=0):
  """ids -> a table lookup ("embedding": keras.layers.Embedding; "gather": `_GatherSum`)
  -> Dense. The table is the first weight."""
  keras.utils.set_random_seed(seed)
  ids = keras.Input((IDS_PER_EXAMPLE,), dtype="int32")
  if kind == "embedding":
    features = keras.layers.Flatten()(keras.layers.Embedding(
        VOCABULARY, WIDTH, embeddings_initializer="random_normal")(ids))
  else:
    features = _GatherSum()(ids)
  outputs = keras.layers.Dense(2, bias_initializer="random_normal")(features)
  return keras.Model(ids, outputs)


# name: Adam's keyword arguments, as in KERAS_OPTIONS. clipvalue with clipnorm is adam_xla's
# own (Keras 3 refuses it): values first, then the norm. The clip limits are below the table's
# gradient (checked).
REFERENCE_OPTIONS = {
    "defaults": {},
    "amsgrad": {"beta_2": 0.5, "amsgrad": True},
    "clipnorm": {"clipnorm": 0.02},
    "clipvalue_and_clipnorm": {"clipvalue": 0.005, "clipnorm": 0.01},
    "global_clipnorm": {"global_clipnorm": 0.02},
    "weight_decay": {"weight_decay": 0.5},
    "changing_hyperparameters": {"learning_rate": "schedule", "beta_1": "variable"},
}
_REFERENCE_BETA_1 = [0.875, 0.75, 0.5]  # per step


def _check_clipping_binds(table_grad, kwargs):
  """The clip options change the table's gradient, so that comparing tests them."""
  if "clipvalue" in kwargs:
    assert np.max(np.abs(table_grad)) > 2 * kwargs["clipvalue"]
    table_grad = np.clip(table_grad, -kwargs["clipvalue"], kwargs["clipvalue"])
  for key in ("clipnorm", "global_clipnorm"):
    if key in kwargs:
      assert np.linalg.norm(table_grad) > 2 * kwargs[key]


def _reference_trajectory(kind, option, sparse_mode, initial):
  """The NumPy reference's weights after each step of fit's: step k on batch k, its gradient
  taken by a tape on a copy of the model that holds the reference's weights."""
  kwargs = {"learning_rate": LR, **EXACT, **REFERENCE_OPTIONS[option]}
  if kwargs["learning_rate"] == "schedule":
    schedule = _schedule(4 * LR)
    kwargs["learning_rate"] = lambda step: float(schedule(step))
  model = _embedding_model(kind, seed=5)
  lazy = sparse_mode == "lazy"
  decay = kwargs.pop("weight_decay", 0.0)
  # Decay for all but the biases: a reference for each group (no option here couples them).
  names = [w.path for w in model.trainable_weights]
  decayed = [i for i, name in enumerate(names) if "bias" not in name]
  assert 0 < len(decayed) < len(names)
  groups = [(decayed, numpy_adam.NumpyAdam(lazy=lazy, weight_decay=decay, **kwargs)),
            ([i for i in range(len(names)) if i not in decayed],
             numpy_adam.NumpyAdam(lazy=lazy, **kwargs))]
  if not decay:
    groups = [(list(range(len(names))), numpy_adam.NumpyAdam(lazy=lazy, **kwargs))]
  params = [w.astype(np.float64) for w in initial]
  trajectory = []
  for step in range(len(_STEP_ROWS)):
    batch = slice(step * BATCH, (step + 1) * BATCH)
    model.set_weights([p.astype(np.float32) for p in params])
    with tf.GradientTape() as tape:
      loss = keras.losses.MeanSquaredError()(_TARGETS[batch], model(_IDS[batch], training=True))
    grads, touched = [], []
    for grad, param in zip(tape.gradient(loss, model.trainable_weights), params):
      if isinstance(grad, tf.IndexedSlices):
        dense = np.zeros(param.shape)
        np.add.at(dense, grad.indices.numpy(), grad.values.numpy())
        grads.append(dense)
        touched.append(grad.indices.numpy())
      else:
        grads.append(grad.numpy())
        touched.append(None)
    # The table's gradient is sparse, with repeated ids; the others are dense.
    assert touched[0] is not None and all(t is None for t in touched[1:])
    assert len(np.unique(touched[0])) < len(touched[0])
    if step == 0:
      _check_clipping_binds(grads[0], kwargs)
    for indices, ref in groups:
      if REFERENCE_OPTIONS[option].get("beta_1") == "variable":
        ref.beta_1 = _REFERENCE_BETA_1[step]
      ref.step([params[i] for i in indices], [grads[i] for i in indices],
               [touched[i] for i in indices])  # updates params' arrays in place
    trajectory.append([p.copy() for p in params])
  return trajectory


def _fit_embedding_model(kind, option, sparse_mode, model_jit, initial):
  """fit's weights after each step: one epoch of batches of BATCH, in order."""
  kwargs, callbacks = _optimizer_arguments(REFERENCE_OPTIONS[option], _REFERENCE_BETA_1)
  model = _embedding_model(kind, seed=7)
  model.set_weights(initial)
  optimizer = adam_xla.Adam(sparse_mode=sparse_mode, **kwargs)
  if option == "weight_decay":
    optimizer.exclude_from_weight_decay(var_names=["bias"])
  model.compile(optimizer=optimizer, loss="mse", jit_compile=model_jit)
  recorder = _RecordWeights()
  model.fit(_IDS, _TARGETS, batch_size=BATCH, epochs=1, shuffle=False, verbose=0,
            callbacks=callbacks + [recorder])
  assert int(optimizer.iterations.numpy()) == len(_STEP_ROWS)
  return recorder.weights


def _sparse_case(kind, option, model_jit):
  return pytest.param(kind, option, model_jit,
                      id=f"{kind}-{option}-{'fit_xla' if model_jit else 'fit_graph'}")


# model.compile's jit_compile alternates over the options: fit's step as one XLA program with
# the update inlined, or as a graph calling the update's own XLA program (CPU kernels in both).
_SPARSE_CASES = [
    _sparse_case("embedding", option, model_jit)
    for option, model_jit in [("defaults", True), ("amsgrad", True), ("clipnorm", False),
                              ("clipvalue_and_clipnorm", True), ("global_clipnorm", False),
                              ("weight_decay", True), ("changing_hyperparameters", False)]
] + [_sparse_case("gather", "defaults", False)]


@pytest.mark.parametrize("sparse_mode", adam_xla.SPARSE_MODES)
@pytest.mark.parametrize("kind,option,model_jit", _SPARSE_CASES)
def test_fit_with_sparse_gradients_follows_the_reference(kind, option, model_jit, sparse_mode):
  """Weights after each of 3 steps as the reference's; lazy mode moves exactly the batch's
  rows, dense mode also every row seen before (and with weight decay, every row)."""
  initial = _embedding_model(kind).get_weights()
  got = _fit_embedding_model(kind, option, sparse_mode, model_jit, initial)
  expected = _reference_trajectory(kind, option, sparse_mode, initial)
  assert len(got) == len(expected) == len(_STEP_ROWS)
  for step, (got_step, expected_step) in enumerate(zip(got, expected)):
    _assert_weights_close(got_step, expected_step, what=f"step {step + 1}")
  # Which rows of the table each step moved.
  tables = [initial[0]] + [weights[0] for weights in got]
  assert tables[0].shape == (VOCABULARY, WIDTH)
  seen = set()
  for step in range(len(_STEP_ROWS)):
    moved = set(np.flatnonzero(np.any(tables[step + 1] != tables[step], axis=1)).tolist())
    present = set(np.unique(_IDS[step * BATCH:(step + 1) * BATCH]).tolist())
    if sparse_mode == "lazy":  # only the batch's rows
      assert moved == present, step
    elif option == "weight_decay":  # every row decays
      assert moved == set(range(VOCABULARY)), step
    else:  # rows seen before keep moving with their moments; rows never seen have none
      assert moved == present | seen, step
    seen |= present
  assert seen == set(range(12))


# ---- 3. MirroredStrategy on 2 and 4 devices -----------------------------------------------

MIRRORED_OPTIONS = {"defaults": {}, "clipnorm": {"clipnorm": 1.0}}
_one_device_results = {}


def _fit_in_scope(strategy, option):
  """The model and optimizer after fitting one epoch of 3 global batches of 8 (one epoch:
  each makes a new distributed iterator, slow to create)."""
  initial = _mlp().get_weights()
  with strategy.scope():
    model = _mlp(seed=1)
    model.set_weights(initial)
    optimizer = adam_xla.Adam(LR, **EXACT, **MIRRORED_OPTIONS[option])
    model.compile(optimizer=optimizer, loss="mse")
  model.fit(_X, _Y, batch_size=8, epochs=1, shuffle=False, verbose=0)
  return model, optimizer


def _one_device_weights(option):
  if option not in _one_device_results:
    model, _ = _fit_in_scope(tf.distribute.get_strategy(), option)
    _one_device_results[option] = model.get_weights()
  return _one_device_results[option]


@needs_four_cpus
@pytest.mark.parametrize("devices", [2, 4])
@pytest.mark.parametrize("option", MIRRORED_OPTIONS)
def test_fit_under_mirrored_strategy_equals_one_device(option, devices):
  """Gradients are summed over replicas before clipping, so the fit is the one-device fit;
  every device applies the same update, so all copies of weights and slots are equal."""
  strategy = STRATEGIES[devices]
  model, optimizer = _fit_in_scope(strategy, option)
  _assert_weights_close(model.get_weights(), _one_device_weights(option), what=option)
  assert _max_difference(model.get_weights(), _mlp().get_weights()) > 0.01
  assert int(optimizer.iterations.numpy()) == 3
  if option == "clipnorm":  # it clipped: the trajectory is not the defaults'
    assert _max_difference(_one_device_weights(option), _one_device_weights("defaults")) > 1e-4
  for var in model.trainable_weights:
    copies = [c.numpy() for c in strategy.experimental_local_results(var.value)]
    assert len(copies) == devices
    for copy in copies[1:]:
      np.testing.assert_array_equal(copy, copies[0])
    for name in optimizer.slot_names:
      slot = optimizer.slot(var, name)
      held = slot.buffer if isinstance(slot, slots.PackedSlot) else slot
      assert isinstance(held, values_lib.MirroredVariable), (var.path, name)
      slot_copies = [c.numpy() for c in slot.values]
      assert len(slot_copies) == devices
      assert np.all(slot_copies[0] != 0) if name == "v" else np.any(slot_copies[0] != 0)
      for copy in slot_copies[1:]:
        np.testing.assert_array_equal(copy, slot_copies[0])


# ---- 4. Mixed float16: Keras' LossScaleOptimizer around adam_xla.Adam --------------------


@pytest.fixture(name="mixed_float16")
def _mixed_float16():
  keras.mixed_precision.set_global_policy("mixed_float16")
  try:
    yield
  finally:
    keras.mixed_precision.set_global_policy("float32")


def _fit_mixed(optimizer, initial):
  model = _mlp(seed=1)
  model.set_weights(initial)
  model.compile(optimizer=optimizer, loss="mse")
  history = model.fit(_X, _Y, batch_size=8, epochs=2, shuffle=False, verbose=0)
  return model, history.history["loss"]


@pytest.mark.usefixtures("mixed_float16")
def test_mixed_float16_fit_matches_keras_adam():
  """Keras wraps adam_xla.Adam in its LossScaleOptimizer, as keras.optimizers.Adam."""
  initial = _mlp().get_weights()
  ours = adam_xla.Adam(LR, **EXACT)
  model, losses = _fit_mixed(ours, initial)
  assert model.layers[0].compute_dtype == "float16"
  assert model.layers[0].kernel.dtype == "float32"
  assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
  assert model.optimizer.inner_optimizer is ours
  assert int(ours.iterations.numpy()) == 6  # no step skipped
  keras_model, keras_losses = _fit_mixed(keras.optimizers.Adam(LR, **EXACT), initial)
  assert int(keras_model.optimizer.inner_optimizer.iterations.numpy()) == 6
  np.testing.assert_allclose(losses, keras_losses, rtol=1e-3)
  _assert_weights_close(model.get_weights(), keras_model.get_weights(), rtol=1e-3, atol=1e-4)
  assert _max_difference(model.get_weights(), initial) > 0.01


# ---- 5. The update inside fit's XLA program ------------------------------------------------

# Fits without XLA, prints the XLA modules dumped so far, then fits with jit_compile=True.
_HLO_PROGRAM = textwrap.dedent("""
    import json, os, sys
    import numpy as np
    import keras
    import adam_xla

    def fit(jit_compile):
      keras.utils.set_random_seed(0)
      model = keras.Sequential([keras.Input((5,)), keras.layers.Dense(8, activation="tanh"),
                                keras.layers.Dense(3)])
      model.compile(optimizer=adam_xla.Adam(), loss="mse", jit_compile=jit_compile)
      rng = np.random.default_rng(0)
      x = rng.normal(size=(16, 5)).astype(np.float32)
      y = rng.normal(size=(16, 3)).astype(np.float32)
      model.fit(x, y, batch_size=8, verbose=0)

    fit(False)
    print(json.dumps(sorted(os.listdir(sys.argv[1]))))
    fit(True)
    """)


def _dump_fits(dump_dir):
  """Runs _HLO_PROGRAM, dumping XLA's modules; returns the files written by each fit."""
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  python_path = os.pathsep.join([repo] + [p for p in [os.environ.get("PYTHONPATH")] if p])
  env = dict(os.environ, XLA_FLAGS=f"--xla_dump_to={dump_dir} --xla_dump_hlo_as_text",
             TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=python_path, **{cpu_kernel.ENV_SWITCH: "1"})
  run = subprocess.run([sys.executable, "-c", _HLO_PROGRAM, dump_dir], env=env, check=False,
                       capture_output=True, text=True, timeout=300)
  assert run.returncode == 0, run.stderr[-3000:]
  first = set(json.loads(run.stdout.strip().splitlines()[-1]))
  return {False: first, True: set(os.listdir(dump_dir)) - first}


def test_update_is_inside_fits_xla_program_only_with_jit_compile(tmp_path):
  """jit_compile=True: one optimized module holds the model's dots and the one call of the CPU
  kernel that updates all four variables. False: the kernel's module has no dot."""
  files = _dump_fits(str(tmp_path))
  kernel = f'custom_call_target="{cpu_kernel.TARGET}"'
  for jit_compile in (False, True):
    modules = {}
    for name in files[jit_compile]:
      if name.endswith("after_optimizations.txt"):
        modules[name] = (tmp_path / name).read_text(encoding="utf-8")
    with_kernel = {name for name, text in modules.items() if kernel in text}
    with_dot = {name for name, text in modules.items() if " dot(" in text}
    both = with_kernel & with_dot
    if jit_compile:  # one program: forward, backward and the update (one call for all four)
      assert len(both) == 1 and with_kernel == both, sorted(modules)
      assert modules[both.pop()].count(kernel) == 1
    else:  # the update is the optimizer's own XLA program; the model's ops are not XLA's
      assert with_kernel and not with_dot, sorted(modules)


if __name__ == "__main__":
  pytest_main.main(__file__)
