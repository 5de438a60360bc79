"""Tests for adam_xla/engine.py: how a skipped step (apply_if) leaves the state alone.

The backends' arithmetic is tested against float64 NumPy in update_rule_test, cpu_kernel_test
and the optimizer's tests; here, that `apply_if` False returns every input bit for bit.
"""

import numpy as np
import pytest
import tensorflow as tf

from adam_xla import engine
from adam_xla import update_rule
from tests import pytest_main


@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "xla"])
@pytest.mark.parametrize("apply", [False, True])
def test_adam_step_at_rows_apply_if(compiled, apply):
  """The XLA rows path skips a step without a select of the moments: False returns every
  input bit for bit (negative zeros, NaN gradients and all); True is the step without
  apply_if."""
  param = tf.constant([[1.0, -0.0], [0.0, 2.0], [-3.0, 0.5]], tf.float64)
  m = tf.constant([[-0.0, 0.5], [0.25, -0.0], [1.0, -2.0]], tf.float64)
  v = tf.constant([[0.0, 1.0], [2.0, 0.5], [0.125, 3.0]], tf.float64)
  vhat = v + 1.0
  indices = tf.constant([2, 0, 2])
  rows = tf.constant([[np.nan, 1.0], [np.inf, -1.0], [0.0, 0.0]], tf.float64)
  if apply:
    rows = tf.constant([[0.5, 1.0], [-2.0, -1.0], [0.0, 0.0]], tf.float64)

  def step(apply_if):
    c = update_rule.step_coefficients(0.1, 0.9, 0.999, 1e-7, tf.constant(0, tf.int64), tf.float64,
                                      weight_decay=0.5)
    moments = update_rule.Moments(m, v, vhat)
    slices = tf.IndexedSlices(rows, indices)
    with_select = engine.adam_step_at_rows(param, slices, moments, c, apply_if)
    without = update_rule.adam_step_at_rows(param, indices, rows, moments, c)
    return (with_select[0],) + tuple(with_select[1]), (without[0],) + tuple(without[1])

  step = tf.function(step, jit_compile=True) if compiled else step
  got, unselected = step(tf.constant(apply))
  want = unselected if apply else (param, m, v, vhat)
  for g, w in zip(got, want):
    np.testing.assert_array_equal(g.numpy(), w.numpy())
    np.testing.assert_array_equal(np.signbit(g.numpy()), np.signbit(w.numpy()))


if __name__ == "__main__":
  pytest_main.main(__file__)
