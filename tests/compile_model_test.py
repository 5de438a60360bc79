"""adam_xla.compile_model: Keras' fit with the train step compiled as make_train_step's.

Under MirroredStrategy on 2 logical CPUs the step it installs (each replica's forward and
backward as one XLA program, then the optimizer) must give the History and weights of Keras'
own step, for models that use what fit offers: several outputs and losses, `add_loss`,
sample and class weights, validation, metrics, mixed precision, an embedding table. On one
device it must be Keras' step with jit_compile=True; a model XLA cannot compile keeps Keras'
step, with the reason logged. (Several workers: tests/multi_worker_test.py.)
"""

import numpy as np
import pytest
import tensorflow as tf

from tests import logical_cpus

_TWO_CPUS = logical_cpus.split(2) >= 2  # before anything starts the TF runtime

# pylint: disable=wrong-import-position
from absl import logging
import keras

import adam_xla
from adam_xla import keras_fit
from tests import pytest_main

needs_two_cpus = logical_cpus.skip_unless(2)
MIRRORED = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"]) if _TWO_CPUS else None
RATE = 0.01  # of _fit_both's optimizer unless a test gives its own
_RNG = np.random.default_rng(0)
X = _RNG.normal(size=[48, 6]).astype(np.float32)
Y_CLASS = _RNG.integers(0, 3, size=[48]).astype(np.int64)
Y_VALUE = _RNG.normal(size=[48, 1]).astype(np.float32)
SAMPLE_WEIGHT = _RNG.uniform(0.5, 2.0, size=[48]).astype(np.float32)
IDS = _RNG.integers(0, 5, size=[48, 4]).astype(np.int64)  # 5 rows: every batch repeats ids


class _Penalty(keras.layers.Layer):
  """Adds 1e-2 * sum(x^2) of its input to the model's losses (`add_loss`)."""

  def call(self, x):
    self.add_loss(1e-2 * tf.reduce_sum(tf.square(x)))
    return x


def _two_output_model():
  keras.utils.set_random_seed(3)
  inputs = keras.Input((6,))
  hidden = _Penalty()(keras.layers.Dense(8, activation="relu")(inputs))
  return keras.Model(
      inputs, {
          "cls": keras.layers.Dense(3, name="cls")
                 (hidden), "value": keras.layers.Dense(1, name="value")(hidden)
      })


def _classifier():
  keras.utils.set_random_seed(4)
  return keras.Sequential([
      keras.Input((6,)),
      keras.layers.Dense(8, activation="tanh"),
      keras.layers.Dense(3)
  ])


def _embedding_model():
  keras.utils.set_random_seed(5)
  return keras.Sequential([
      keras.Input((4,), dtype="int64"),
      keras.layers.Embedding(5, 3),
      keras.layers.Flatten(),
      keras.layers.Dense(1)
  ])


def _fit_both(strategy, build, compile_args, fit_args, optimizer_args=None):
  """(History, weights, model) for Keras' compile and for compile_model, in `strategy`."""
  runs = {}
  for how in ("keras", "compile_model"):
    with strategy.scope():
      model = build()
      optimizer = adam_xla.Adam(**(optimizer_args or {"learning_rate": RATE}))
      if how == "keras":
        model.compile(optimizer=optimizer, jit_compile=False, **compile_args)
      else:
        adam_xla.compile_model(model, optimizer, **compile_args)
    history = model.fit(**fit_args, epochs=3, verbose=0, shuffle=False)
    runs[how] = (history.history, model.get_weights(), model)
  return runs


def _assert_same(runs, rtol=1e-5, atol=1e-6):
  (keras_history, keras_weights, _), (ours_history, ours_weights, _) = (runs["keras"],
                                                                        runs["compile_model"])
  assert set(keras_history) == set(ours_history)
  for key, values in keras_history.items():
    np.testing.assert_allclose(ours_history[key], values, rtol=rtol, err_msg=key)
  for i, (got, want) in enumerate(zip(ours_weights, keras_weights)):
    np.testing.assert_allclose(got, want, rtol=rtol, atol=atol, err_msg=f"weight {i}")
  # Training moved the weights, so the comparison above can fail.
  assert keras_history["loss"][-1] < keras_history["loss"][0]


_TWO_OUTPUT_COMPILE = dict(
    loss={"cls": keras.losses.SparseCategoricalCrossentropy(from_logits=True), "value": "mse"},
    loss_weights={"cls": 1.0, "value": 0.5}, metrics={"cls": ["accuracy"], "value": ["mae"]})
_TWO_OUTPUT_FIT = dict(x=X[:32], y={"cls": Y_CLASS[:32], "value": Y_VALUE[:32]},
                       sample_weight=SAMPLE_WEIGHT[:32], batch_size=8,
                       validation_data=(X[32:], {"cls": Y_CLASS[32:], "value": Y_VALUE[32:]}))


@needs_two_cpus
def test_mirrored_two_outputs_add_loss_sample_weights_validation():
  runs = _fit_both(MIRRORED, _two_output_model, _TWO_OUTPUT_COMPILE, _TWO_OUTPUT_FIT,
                   {"learning_rate": 0.01, "amsgrad": True, "clipnorm": 1.0})
  _assert_same(runs)
  assert {"val_loss", "cls_accuracy", "val_value_mae"} <= set(runs["keras"][0])
  model = runs["compile_model"][2]
  assert isinstance(model.train_step, keras_fit.ReplicaProgramsStep)
  # Its compiled forward/backward ran (traced once per replica, for one batch shape).
  assert model.train_step._forward_backward.experimental_get_tracing_count() >= 1


@needs_two_cpus
def test_mirrored_class_weight():
  runs = _fit_both(
      MIRRORED, _classifier,
      dict(loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"]),
      dict(x=X, y=Y_CLASS, batch_size=16, class_weight={0: 1.0, 1: 3.0, 2: 0.5}))
  _assert_same(runs)
  # evaluate and predict (Keras' own steps) of the trained models.
  keras_model, ours = runs["keras"][2], runs["compile_model"][2]
  np.testing.assert_allclose(ours.evaluate(X, Y_CLASS, batch_size=16, verbose=0),
                             keras_model.evaluate(X, Y_CLASS, batch_size=16, verbose=0), rtol=1e-5)
  np.testing.assert_allclose(ours.predict(X, batch_size=16, verbose=0),
                             ours(X).numpy(), rtol=1e-5, atol=1e-6)


@needs_two_cpus
@pytest.mark.parametrize("sparse_mode", ["dense", "lazy"])
def test_mirrored_embedding(sparse_mode):
  runs = _fit_both(MIRRORED, _embedding_model, dict(loss="mse"),
                   dict(x=IDS, y=Y_VALUE, batch_size=16),
                   {"learning_rate": 0.05, "sparse_mode": sparse_mode})
  _assert_same(runs)


@needs_two_cpus
def test_mirrored_mixed_float16():
  keras.mixed_precision.set_global_policy("mixed_float16")
  try:
    runs = _fit_both(MIRRORED, _classifier,
                     dict(loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True)),
                     dict(x=X, y=Y_CLASS, batch_size=16))
  finally:
    keras.mixed_precision.set_global_policy("float32")
  # XLA and TensorFlow's kernels round the float16 forward and backward differently, and Adam
  # turns a gradient's relative error into as much of a step of the rate: largest where
  # a gradient is near zero. A fifth of one step over nine steps stays far below what a wrong
  # rate, beta or bias correction moves (a step or more).
  _assert_same(runs, rtol=1e-3, atol=0.2 * RATE)
  optimizer = runs["compile_model"][2].optimizer
  assert isinstance(optimizer, keras.optimizers.LossScaleOptimizer)
  assert isinstance(optimizer.inner_optimizer, adam_xla.Adam)
  assert int(optimizer.inner_optimizer.iterations.numpy()) == 9


def test_one_device_is_keras_step_compiled_whole():
  model = _two_output_model()
  plan = adam_xla.compile_model(model, adam_xla.Adam(0.01), **_TWO_OUTPUT_COMPILE)
  assert plan == "single_program"
  assert model.jit_compile is True
  compiled = model.fit(**_TWO_OUTPUT_FIT, epochs=3, verbose=0, shuffle=False).history
  reference = _two_output_model()
  reference.compile(optimizer=adam_xla.Adam(0.01), jit_compile=False, **_TWO_OUTPUT_COMPILE)
  eager = reference.fit(**_TWO_OUTPUT_FIT, epochs=3, verbose=0, shuffle=False).history
  for key, values in eager.items():
    np.testing.assert_allclose(compiled[key], values, rtol=1e-5, err_msg=key)
  predicted = model.predict(X, batch_size=16, verbose=0)
  for name, values in reference.predict(X, batch_size=16, verbose=0).items():
    np.testing.assert_allclose(predicted[name], values, rtol=1e-5, atol=1e-6, err_msg=name)


class _NotForXla(keras.layers.Layer):
  """An identity layer that declares it cannot be compiled by XLA."""

  def __init__(self, **kwargs):
    super().__init__(**kwargs)
    self.supports_jit = False

  def call(self, x):
    return x


def test_model_xla_cannot_compile_keeps_keras_step(monkeypatch):
  warnings = []
  monkeypatch.setattr(logging, "warning", lambda msg, *args: warnings.append(msg % args))
  keras.utils.set_random_seed(4)
  model = keras.Sequential([keras.Input((6,)), _NotForXla(name="no_xla"), keras.layers.Dense(3)])
  plan = adam_xla.compile_model(model, adam_xla.Adam(0.01),
                                loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
  assert plan is None and model.jit_compile is False
  assert len(warnings) == 1 and "no_xla" in warnings[0] and "without XLA" in warnings[0]
  history = model.fit(X, Y_CLASS, batch_size=16, epochs=2, verbose=0).history
  assert history["loss"][1] < history["loss"][0]


def test_jit_compile_is_refused():
  with pytest.raises(ValueError, match="jit_compile"):
    adam_xla.compile_model(_classifier(), adam_xla.Adam(), loss="mse", jit_compile=True)


if __name__ == "__main__":
  pytest_main.main(__file__)
