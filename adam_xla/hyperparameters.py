"""Adam's hyperparameters: validation, and their value at a step inside the compiled program.

A hyperparameter is a Python number, a tensor, a zero-argument callable, or (learning rate
only) a Keras `LearningRateSchedule` called with the iteration count. Schedules and callables
are evaluated inside the step, so their changing values never retrace; a numeric learning
rate is held in a variable (see `Adam._create_step_state`) for the same reason.
"""

import math
import numbers

import keras
import tensorflow as tf

LearningRateSchedule = keras.optimizers.schedules.LearningRateSchedule


def is_schedule(value):
  return isinstance(value, LearningRateSchedule)


def validate(name, value, low, high=math.inf, high_open=False, allow_schedule=False):
  """Raises a clear error for a hyperparameter that cannot be used; returns it unchanged.

  Numbers must lie in [low, high] (or [low, high) when `high_open`); tensors, variables and
  callables are checked for type only, since their values may change step to step.
  """
  if is_schedule(value) and allow_schedule:
    return value
  if is_schedule(value) or isinstance(value, bool) or not (
      isinstance(value, (numbers.Real, tf.Tensor, tf.Variable, keras.Variable)) or
      callable(value)):
    accepted = "a float, a tensor, a zero-argument callable"
    accepted += " or a keras LearningRateSchedule" if allow_schedule else ""
    raise TypeError(f"Adam: `{name}` must be {accepted}; got {value!r} "
                    f"of type {type(value).__name__}.")
  if isinstance(value, numbers.Real):
    above = value >= high if high_open else value > high
    if not math.isfinite(value) or value < low or above:
      bracket = ")" if high_open else "]"
      raise ValueError(f"Adam: `{name}` must be a finite number in [{low}, {high}{bracket}; "
                       f"got {value!r}.")
  return value


def validate_non_negative(name, value):
  """A plain finite number >= 0 (for settings fixed at construction, like weight decay)."""
  if (isinstance(value, bool) or not isinstance(value, numbers.Real) or
      not math.isfinite(value) or value < 0):
    raise ValueError(f"Adam: `{name}` must be a finite float >= 0; got {value!r}.")
  return value


def validate_positive_or_none(name, value):
  """For the clipping options: None (off) or a finite number > 0."""
  if value is None:
    return None
  if (isinstance(value, bool) or not isinstance(value, numbers.Real) or
      not math.isfinite(value) or value <= 0):
    raise ValueError(f"Adam: `{name}` must be None (no clipping) or a finite float > 0; "
                     f"got {value!r}.")
  return float(value)


def current_value(value, iterations):
  """The hyperparameter's value for the step about to run (iterations steps done so far)."""
  if is_schedule(value):
    return value(iterations)
  if callable(value) and not isinstance(value, (tf.Variable, keras.Variable)):
    return value()
  return value


def to_config(value):
  """A `get_config` entry: numbers and tensors as floats, schedules serialized."""
  if is_schedule(value):
    return keras.optimizers.schedules.serialize(value)
  if isinstance(value, (tf.Tensor, tf.Variable, keras.Variable)) and tf.executing_eagerly():
    return float(value.numpy()) if hasattr(value, "numpy") else float(value)
  return value


def from_config(value):
  if isinstance(value, dict):
    return keras.optimizers.schedules.deserialize(value)
  return value
