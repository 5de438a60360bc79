"""Tests for adam_xla/hyperparameters.py: validation, per-step values and config round trip."""

import json
import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from adam_xla import hyperparameters
from tests import pytest_main

validate = hyperparameters.validate


def exponential_decay():
  return keras.optimizers.schedules.ExponentialDecay(initial_learning_rate=0.1, decay_steps=10,
                                                     decay_rate=0.5)


def np_exponential_decay(step, initial=0.1, decay_steps=10, rate=0.5):
  return initial * rate**(step / decay_steps)


# ---- validate: accepted values ------------------------------------------------------------


@pytest.mark.parametrize(
    "value", [0.0, 0.5, 1, 3.0, np.float32(0.25),
              np.float64(2.0), np.int64(1)], ids=lambda v: f"{type(v).__name__}({v})")
def test_validate_accepts_numbers_in_range(value):
  assert validate("learning_rate", value, low=0.0) is value


def test_validate_accepts_bounds():
  assert validate("beta_1", 0.0, 0.0, 1.0, high_open=True) == 0.0
  assert validate("x", 1.0, 0.0, 1.0) == 1.0  # closed upper bound includes 1.0
  assert validate("x", 0.999999, 0.0, 1.0, high_open=True) == 0.999999


def test_validate_accepts_tensors_variables_and_callables_unchecked():
  # Their values can change from step to step, so only the type is checked: even an out of
  # range tensor passes.
  for value in [
      tf.constant(0.9),
      tf.constant(5.0, tf.float64),
      tf.Variable(0.9),
      tf.Variable(-1.0),
      keras.Variable(0.9), lambda: 0.9, lambda: 2.0
  ]:
    assert validate("beta_1", value, 0.0, 1.0, high_open=True) is value


def test_validate_accepts_schedule_when_allowed():
  schedule = exponential_decay()
  assert validate("learning_rate", schedule, low=0.0, allow_schedule=True) is schedule


def test_validate_rejects_schedule_when_not_allowed():
  # Only the learning rate may be a LearningRateSchedule (called with the step); for the
  # other hyperparameters, which take a zero-argument callable, it must be refused.
  with pytest.raises(TypeError, match="`beta_1`"):
    validate("beta_1", exponential_decay(), 0.0, 1.0, high_open=True)


# ---- validate: type errors ----------------------------------------------------------------


@pytest.mark.parametrize("value", ["0.1", True, False, None, [0.1], b"0.1", 1j], ids=repr)
@pytest.mark.parametrize("allow_schedule", [False, True])
def test_validate_type_error_names_argument(value, allow_schedule):
  with pytest.raises(TypeError) as info:
    validate("epsilon", value, low=0.0, allow_schedule=allow_schedule)
  message = str(info.value)
  assert "`epsilon`" in message
  assert repr(value) in message
  assert ("LearningRateSchedule" in message) == allow_schedule


# ---- validate: value errors ---------------------------------------------------------------


@pytest.mark.parametrize("name,value,kwargs", [
    ("learning_rate", -0.1, dict(low=0.0)),
    ("learning_rate", -1, dict(low=0.0)),
    ("learning_rate", math.inf, dict(low=0.0)),
    ("learning_rate", -math.inf, dict(low=0.0)),
    ("learning_rate", math.nan, dict(low=0.0)),
    ("learning_rate", np.float32("nan"), dict(low=0.0)),
    ("epsilon", -1e-7, dict(low=0.0)),
    ("beta_1", 1.0, dict(low=0.0, high=1.0, high_open=True)),
    ("beta_2", 1.0, dict(low=0.0, high=1.0, high_open=True)),
    ("beta_2", 1.5, dict(low=0.0, high=1.0, high_open=True)),
    ("beta_1", -0.1, dict(low=0.0, high=1.0, high_open=True)),
    ("beta_1", math.nan, dict(low=0.0, high=1.0, high_open=True)),
    ("x", 1.0 + 1e-9, dict(low=0.0, high=1.0)),
])
def test_validate_value_error_names_argument(name, value, kwargs):
  with pytest.raises(ValueError) as info:
    validate(name, value, **kwargs)
  message = str(info.value)
  assert f"`{name}`" in message
  assert repr(value) in message


def test_validate_value_error_shows_interval():
  with pytest.raises(ValueError, match=r"\[0\.0, 1\.0\)"):
    validate("beta_1", 1.0, 0.0, 1.0, high_open=True)
  with pytest.raises(ValueError, match=r"\[0\.0, 1\.0\]"):
    validate("x", 2.0, 0.0, 1.0)


def test_validate_open_lower_bound():
  # epsilon: > 0, since epsilon = 0 gives 0 / 0 for a zero gradient element.
  assert validate("epsilon", 1e-300, low=0.0, low_open=True) == 1e-300
  for value in (0.0, -0.0, -1e-7):
    with pytest.raises(ValueError, match=r"`epsilon` must be a finite number in \(0.0, inf\)"):
      validate("epsilon", value, low=0.0, low_open=True)


# ---- check_in_dtype -----------------------------------------------------------------------

check_in_dtype = hyperparameters.check_in_dtype


@pytest.mark.parametrize("name,value,dtype", [
    ("beta_1", 1 - 1e-9, tf.float64),
    ("beta_2", 1 - 1e-9, tf.float64),
    ("beta_1", float(np.float32(0.99999994)), tf.float32),
    ("beta_2", 0.999, tf.float32),
    ("epsilon", 1e-50, tf.float64),
    ("epsilon", float(np.finfo(np.float32).tiny), tf.float32),
    ("epsilon", 1e38, tf.float32),
    ("beta_1", tf.constant(1.0), tf.float32),
    ("epsilon", lambda: 0.0, tf.float32),
    ("learning_rate", 1e-50, tf.float32),
], ids=repr)
def test_check_in_dtype_accepts(name, value, dtype):
  check_in_dtype(name, value, dtype, "w:0")


@pytest.mark.parametrize("name,value,dtype,pattern", [
    ("beta_1", 1 - 1e-9, tf.float32, r"`beta_1` = 0.999999999 rounds to 1.0 in float32.*"
     r"'w:0'.*at most 0.99999994 \(the largest float32 below 1\)"),
    ("beta_2", 1 - 1e-17 + 1e-16, tf.float32, r"`beta_2`.*rounds to 1.0 in float32"),
    ("beta_2", np.float64(1 - 2**-30), tf.float32, r"`beta_2`.*rounds to 1.0 in float32"),
    ("epsilon", 1e-50, tf.float32, r"`epsilon` = 1e-50 is below the smallest normal number in "
     r"float32, the dtype of variable 'w:0' \(1.1754944e-38\).*0 / 0"),
    ("epsilon", 1e-39, tf.float32, r"`epsilon`.*smallest normal"),
    ("epsilon", 1e-310, tf.float64, r"`epsilon`.*smallest normal number in float64"),
    ("epsilon", 1e39, tf.float32, r"`epsilon` = 1e\+39 overflows to inf in float32"),
], ids=repr)
def test_check_in_dtype_refuses(name, value, dtype, pattern):
  with pytest.raises(ValueError, match=pattern):
    check_in_dtype(name, value, dtype, "w:0")


# ---- validate_positive_or_none ------------------------------------------------------------


def test_validate_positive_or_none_accepts():
  assert hyperparameters.validate_positive_or_none("clipnorm", None) is None
  for value, want in [(1, 1.0), (0.5, 0.5), (np.float32(2.0), 2.0), (1e-30, 1e-30)]:
    got = hyperparameters.validate_positive_or_none("clipnorm", value)
    assert type(got) is float
    assert got == want


@pytest.mark.parametrize("value", [0, 0.0, -1.0, math.inf, math.nan, True, "1.0"], ids=repr)
def test_validate_positive_or_none_rejects(value):
  with pytest.raises(ValueError, match="`global_clipnorm`"):
    hyperparameters.validate_positive_or_none("global_clipnorm", value)


def test_validate_positive_or_none_rejects_tensor():
  # (Built in the test, not at collection: no TF op may run before distribution_test has
  # configured its logical devices when several test files share one process.)
  with pytest.raises(ValueError, match="`clipvalue`"):
    hyperparameters.validate_positive_or_none("clipvalue", tf.constant(1.0))


# ---- current_value ------------------------------------------------------------------------


def test_current_value_schedule_is_called_with_step():
  schedule = exponential_decay()
  for step in [0, 5, 10, 37]:
    got = hyperparameters.current_value(schedule, tf.constant(step, tf.int64))
    np.testing.assert_allclose(float(got), np_exponential_decay(step), rtol=1e-6)


def test_current_value_schedule_with_iterations_variable_in_function():
  schedule = exponential_decay()
  iterations = tf.Variable(0, dtype=tf.int64)
  fn = tf.function(lambda: hyperparameters.current_value(schedule, iterations), jit_compile=True)
  for step in [0, 3, 20]:
    iterations.assign(step)
    np.testing.assert_allclose(float(fn()), np_exponential_decay(step), rtol=1e-6)
  assert fn.experimental_get_tracing_count() == 1


def test_current_value_custom_schedule_receives_step():

  class Recorder(keras.optimizers.schedules.LearningRateSchedule):

    def __init__(self):
      self.steps = []

    def __call__(self, step):
      self.steps.append(step)
      return 0.5

  schedule = Recorder()
  step = tf.constant(7, tf.int64)
  assert hyperparameters.current_value(schedule, step) == 0.5
  assert len(schedule.steps) == 1 and schedule.steps[0] is step


def test_current_value_callable_called_without_arguments():
  calls = []

  def beta():
    calls.append(1)
    return 0.8

  assert hyperparameters.current_value(beta, tf.constant(3, tf.int64)) == 0.8
  assert calls == [1]


def test_current_value_number_tensor_and_variable_returned_as_is():
  constant = tf.constant(0.3)
  variable = tf.Variable(0.4)
  keras_variable = keras.Variable(0.6)
  assert hyperparameters.current_value(0.25, 9) == 0.25
  assert hyperparameters.current_value(constant, 9) is constant
  assert hyperparameters.current_value(variable, 9) is variable
  assert hyperparameters.current_value(keras_variable, 9) is keras_variable


# ---- to_config / from_config --------------------------------------------------------------


def test_config_round_trip_exponential_decay():
  schedule = exponential_decay()
  config = hyperparameters.to_config(schedule)
  json.loads(json.dumps(config))  # JSON serializable
  restored = hyperparameters.from_config(json.loads(json.dumps(config)))
  assert isinstance(restored, keras.optimizers.schedules.ExponentialDecay)
  assert restored is not schedule
  assert restored.get_config() == schedule.get_config()
  for step in [0, 4, 10, 25]:
    np.testing.assert_allclose(float(restored(step)), np_exponential_decay(step), rtol=1e-6)


def test_config_numbers_and_tensors_become_floats():
  for value, want in [(0.5, 0.5), (tf.constant(0.25), 0.25), (tf.Variable(0.75), 0.75),
                      (tf.constant(0.125, tf.float64), 0.125), (keras.Variable(2.5), 2.5)]:
    got = hyperparameters.to_config(value)
    assert type(got) is float, type(value)
    assert got == want
    assert json.loads(json.dumps(got)) == want
    assert hyperparameters.from_config(got) == want


def test_from_config_passes_numbers_through():
  assert hyperparameters.from_config(0.001) == 0.001
  assert hyperparameters.from_config(3) == 3


def test_is_schedule():
  assert hyperparameters.is_schedule(exponential_decay())
  assert not hyperparameters.is_schedule(0.1)
  assert not hyperparameters.is_schedule(lambda step: 0.1)
  assert not hyperparameters.is_schedule(tf.constant(0.1))


if __name__ == "__main__":
  pytest_main.main(__file__)
