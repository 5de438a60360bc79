"""Internal: Adam's hyperparameters: validation, and their value at a step in the compiled program.

A hyperparameter is a Python number, a tensor, a zero-argument callable, or (learning rate
only) a Keras `LearningRateSchedule` called with the iteration count. Schedules and callables
are evaluated inside the step, so their changing values never retrace; a numeric learning
rate is held in a variable (see `Adam._held_rate`) for the same reason. What a traced step
read it keeps, so a hyperparameter that is not a variable is replaced only before that
(`check_replaceable`).
"""

import math
import numbers

import keras
import numpy as np
import tensorflow as tf

LearningRateSchedule = keras.optimizers.schedules.LearningRateSchedule


def is_schedule(value):
  return isinstance(value, LearningRateSchedule)


def is_variable(value):
  """Whether `value` is a tf or Keras variable: a step reads it (never calls it), so a value
  assigned to it reaches steps already compiled."""
  return isinstance(value, (tf.Variable, keras.Variable))


def check_replaceable(name, current, new, traced):
  """Raises TypeError where replacing hyperparameter `current` by `new` would go stale.

  For every change but a number assigned to a variable (which steps read, so it reaches them).
  A schedule never becomes a number (Keras' rule: a schedule's rate is not settable).
  Otherwise replacing is fine until a traced step has read `current` (`traced`): that step
  keeps what it read (the old variable, or a graph of the old schedule or callable).
  """
  if is_schedule(current) and not callable(new):
    raise TypeError(
        f"Adam: `{name}` cannot be set to {new!r}: this optimizer's `{name}` is a "
        "LearningRateSchedule, whose rate is not settable (as in Keras). For a settable rate, "
        f"create the optimizer with a float `{name}`.")
  if traced:
    raise TypeError(
        f"Adam: `{name}` cannot be replaced by {new!r} after a step has been traced: the "
        f"traced step holds the previous `{name}` and would not see the new one. Create a "
        f"new optimizer (and step) with the new `{name}`; to change it during training, "
        "create the optimizer with a float and assign numbers, or with a schedule or callable "
        "that computes it.")


def validate(name, value, low, high=math.inf, *, low_open=False, high_open=False,
             allow_schedule=False):
  """Raises a clear error for a hyperparameter that cannot be used; returns it unchanged.

  Numbers must lie in [low, high], with either end open when `low_open` / `high_open`; tensors,
  variables and callables are checked for type only, since their values may change step to
  step. (`check_in_dtype` checks what a number becomes in a variable's dtype.)
  """
  if is_schedule(value) and allow_schedule:
    return value
  if is_schedule(value) or isinstance(value, bool) or not (isinstance(
      value, (numbers.Real, tf.Tensor, tf.Variable, keras.Variable)) or callable(value)):
    accepted = "a float, a tensor, a zero-argument callable"
    accepted += " or a keras LearningRateSchedule" if allow_schedule else ""
    raise TypeError(f"Adam: `{name}` must be {accepted}; got {value!r} "
                    f"of type {type(value).__name__}.")
  if isinstance(value, numbers.Real):
    below = value <= low if low_open else value < low
    above = value >= high if high_open else value > high
    if not math.isfinite(value) or below or above:
      interval = (f"{'(' if low_open else '['}{low}, {high}"
                  f"{')' if high_open or high == math.inf else ']'}")
      raise ValueError(f"Adam: `{name}` must be a finite number in {interval}; "
                       f"got {value!r}.")
  return value


def check_in_dtype(name, value, dtype, variable_name):
  """Raises if a numeric beta or epsilon, valid as a Python float, breaks in `dtype`.

  Numbers are cast to each variable's dtype. A beta that rounds to 1 makes 1 - beta^t zero
  (beta_1: lr_t = inf and NaN steps; beta_2: lr_t = 0 and no step). An epsilon below the
  dtype's smallest normal number is flushed to zero (TF flushes subnormals on CPU; TPUs have
  none), and a zero gradient element then gives 0 / 0. Tensors and callables are not checked.
  """
  if isinstance(value, bool) or not isinstance(value, numbers.Real):
    return
  np_dtype = tf.as_dtype(dtype).as_numpy_dtype
  with np.errstate(over="ignore"):
    rounded = np_dtype(value)
  where = f"in {dtype.name}, the dtype of variable '{variable_name}'"
  if name in ("beta_1", "beta_2") and rounded >= 1:
    largest = np.nextafter(np_dtype(1), np_dtype(0))
    raise ValueError(
        f"Adam: `{name}` = {value!r} rounds to 1.0 {where}, which makes 1 - {name}^t zero; "
        f"use a `{name}` of at most {largest!s} (the largest {dtype.name} below 1), or "
        "float64 variables.")
  if name == "epsilon" and rounded < np.finfo(np_dtype).tiny:
    smallest = np.finfo(np_dtype).tiny
    raise ValueError(
        f"Adam: `epsilon` = {value!r} is below the smallest normal number {where} "
        f"({smallest!s}), so it is flushed to 0 and a zero gradient element gives 0 / 0 = NaN; "
        f"use an `epsilon` of at least {smallest!s}, or float64 variables.")
  if name == "epsilon" and not np.isfinite(rounded):
    raise ValueError(f"Adam: `epsilon` = {value!r} overflows to inf {where}, and then no "
                     f"variable moves; use an `epsilon` below {np.finfo(np_dtype).max!s}.")


def validate_non_negative(name, value):
  """A plain finite number >= 0 (for settings fixed at construction, like weight decay)."""
  if (isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) or
      value < 0):
    raise ValueError(f"Adam: `{name}` must be a finite float >= 0; got {value!r}.")
  return value


def validate_positive_or_none(name, value):
  """For the clipping options: None (off) or a finite number > 0."""
  if value is None:
    return None
  if (isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) or
      value <= 0):
    raise ValueError(f"Adam: `{name}` must be None (no clipping) or a finite float > 0; "
                     f"got {value!r}.")
  return float(value)


def current_value(value, iterations):
  """The hyperparameter's value for the step about to run (iterations steps done so far)."""
  if is_schedule(value):
    return value(iterations)
  if callable(value) and not is_variable(value):
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
