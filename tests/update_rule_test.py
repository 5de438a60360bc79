"""Tests for adam_xla/update_rule.py against a float64 NumPy computation of the formula.

The reference below is written from the documented formula (Keras / Kingma & Ba, epsilon
hat), not from the code under test:

    lr_t = lr * sqrt(1 - beta_2^t) / (1 - beta_1^t)
    m    = beta_1 * m + (1 - beta_1) * g
    v    = beta_2 * v + (1 - beta_2) * g^2
    vhat = max(vhat, v)                      (amsgrad only; replaces v below)
    var  = var - lr_t * m / (sqrt(v) + epsilon)
"""

import numpy as np
import pytest
import tensorflow as tf

from adam_xla import update_rule
from tests import pytest_main

DTYPES = [tf.float32, tf.float64]
# Tolerances for comparing a TF computation in `dtype` with the float64 reference, which is
# given the hyperparameters rounded to `dtype` (adam_xla casts them to the variable's dtype:
# in float32, 1 - 0.999 is 0.000999987, a relative difference of 1.3e-5 from 0.001).
RTOL = {tf.float32: 1e-5, tf.float64: 1e-12}
ATOL = {tf.float32: 1e-6, tf.float64: 1e-14}

# (learning_rate, beta_1, beta_2, epsilon)
HYPERPARAMETERS = [
    (0.001, 0.9, 0.999, 1e-7),  # Keras defaults
    (0.1, 0.5, 0.9, 1e-3),
    (0.05, 0.9, 0.999, 1.0),  # the epsilon hat values suggested for Inception
    (0.05, 0.9, 0.999, 0.1),
    (0.02, 0.0, 0.0, 1e-8),  # degenerate betas: m == g, v == g^2
]


def rounded(hyper, dtype):
  """The hyperparameters as `dtype` represents them, in float64."""
  return tuple(float(np.array(h, dtype.as_numpy_dtype)) for h in hyper)


def np_lr_t(lr, beta_1, beta_2, t):
  return lr * np.sqrt(1.0 - beta_2**t) / (1.0 - beta_1**t)


def np_adam_step(param, grad, m, v, vhat, lr, beta_1, beta_2, epsilon, t):
  """One step of the documented formula in float64; vhat is None without amsgrad."""
  param, grad = np.float64(param), np.float64(grad)
  m = beta_1 * m + (1.0 - beta_1) * grad
  v = beta_2 * v + (1.0 - beta_2) * grad**2
  second = v
  if vhat is not None:
    vhat = np.maximum(vhat, v)
    second = vhat
  param = param - np_lr_t(lr, beta_1, beta_2, t) * m / (np.sqrt(second) + epsilon)
  return param, m, v, vhat


def make_gradients(num_steps, shape, seed):
  """Gradients whose scale changes from step to step, so that amsgrad's max matters."""
  rng = np.random.default_rng(seed)
  scales = [3.0, 0.01, 1.0, 0.001, 5.0, 0.1][:num_steps]
  grads = [rng.normal(size=shape) * s for s in scales]
  grads[1][0] = 0.0  # an exact zero gradient for one element
  return grads


def run_reference(param, grads, amsgrad, lr, beta_1, beta_2, epsilon):
  """Several steps of the reference; returns the final (param, m, v, vhat)."""
  param = np.float64(param)
  m = np.zeros_like(param)
  v = np.zeros_like(param)
  vhat = np.zeros_like(param) if amsgrad else None
  for step, grad in enumerate(grads):
    param, m, v, vhat = np_adam_step(param, grad, m, v, vhat, lr, beta_1, beta_2, epsilon, step + 1)
  return param, m, v, vhat


def tf_step(param, grad, m, v, vhat, lr, beta_1, beta_2, epsilon, iterations, dtype):
  coefficients = update_rule.step_coefficients(lr, beta_1, beta_2, epsilon, iterations, dtype)
  new_param, moments = update_rule.adam_step(param, grad, update_rule.Moments(m, v, vhat),
                                             coefficients)
  return new_param, moments.m, moments.v, moments.vhat


def run_tf(step_fn, param, grads, amsgrad, hyper, dtype):
  lr, beta_1, beta_2, epsilon = hyper
  param = tf.constant(param, dtype)
  m = tf.zeros_like(param)
  v = tf.zeros_like(param)
  vhat = tf.zeros_like(param) if amsgrad else None
  for step, grad in enumerate(grads):
    param, m, v, vhat = step_fn(param, tf.constant(grad, dtype), m, v, vhat, lr, beta_1, beta_2,
                                epsilon, tf.constant(step, tf.int64), dtype)
  return param, m, v, vhat


# ---- step_coefficients --------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("hyper", HYPERPARAMETERS)
@pytest.mark.parametrize("iterations", [0, 1, 4, 99, 9999])
def test_step_coefficients_match_formula(dtype, hyper, iterations):
  lr, beta_1, beta_2, epsilon = hyper
  c = update_rule.step_coefficients(lr, beta_1, beta_2, epsilon, tf.constant(iterations, tf.int64),
                                    dtype)
  for value in (c.lr_t, c.beta_1, c.beta_2, c.epsilon):
    assert value.dtype == dtype
    assert value.shape == ()
  assert c.decay is None
  t = iterations + 1
  lr_r, beta_1_r, beta_2_r, _ = rounded(hyper, dtype)
  np.testing.assert_allclose(c.lr_t.numpy(), np_lr_t(lr_r, beta_1_r, beta_2_r, t), rtol=RTOL[dtype])
  assert c.beta_1.numpy() == np.array(beta_1, dtype.as_numpy_dtype)
  assert c.beta_2.numpy() == np.array(beta_2, dtype.as_numpy_dtype)
  assert c.epsilon.numpy() == np.array(epsilon, dtype.as_numpy_dtype)


def test_step_coefficients_first_step_lr_t():
  # At t = 1: lr_t = lr * sqrt(1 - b2) / (1 - b1); with b1 = 0.9, b2 = 0.999 that is
  # lr * sqrt(0.001) / 0.1.
  c = update_rule.step_coefficients(0.1, 0.9, 0.999, 1e-7, 0, tf.float64)
  np.testing.assert_allclose(c.lr_t.numpy(), 0.1 * np.sqrt(0.001) / 0.1, rtol=1e-13)


@pytest.mark.parametrize("iterations_dtype", [tf.int32, tf.int64])
def test_step_coefficients_accepts_tensor_hyperparameters(iterations_dtype):
  # Hyperparameters given as float32 tensors (e.g. a float32 learning-rate variable) are cast
  # to the variable's dtype.
  lr = tf.Variable(0.25, dtype=tf.float32)
  beta_1 = tf.constant(0.8, tf.float32)
  c = update_rule.step_coefficients(lr, beta_1, 0.99, tf.constant(0.5),
                                    tf.constant(2, iterations_dtype), tf.float64)
  assert c.lr_t.dtype == tf.float64
  expected = np_lr_t(np.float64(np.float32(0.25)), np.float64(np.float32(0.8)), 0.99, 3)
  np.testing.assert_allclose(c.lr_t.numpy(), expected, rtol=1e-12)
  assert c.epsilon.numpy() == 0.5


# ---- adam_step ----------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("amsgrad", [False, True])
@pytest.mark.parametrize("hyper", HYPERPARAMETERS)
def test_adam_step_eager_matches_reference(dtype, amsgrad, hyper):
  param = np.random.default_rng(1).normal(size=(3, 4))
  grads = make_gradients(6, param.shape, seed=2)
  got = run_tf(tf_step, param, grads, amsgrad, hyper, dtype)
  want = run_reference(param, grads, amsgrad, *rounded(hyper, dtype))
  for g, w, name in zip(got, want, ("param", "m", "v", "vhat")):
    if w is None:
      assert g is None, name
      continue
    assert g.dtype == dtype, name
    np.testing.assert_allclose(g.numpy(), w, rtol=RTOL[dtype], atol=ATOL[dtype], err_msg=name)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("amsgrad", [False, True])
@pytest.mark.parametrize("epsilon", [1e-7, 1.0, 0.1])
def test_adam_step_xla_matches_reference(dtype, amsgrad, epsilon):
  hyper = (0.05, 0.9, 0.999, epsilon)
  param = np.random.default_rng(3).normal(size=(5,))
  grads = make_gradients(6, param.shape, seed=4)
  # One compiled function for every step: iterations is a tensor, so it does not retrace.
  compiled = tf.function(tf_step, jit_compile=True)
  got = run_tf(compiled, param, grads, amsgrad, hyper, dtype)
  want = run_reference(param, grads, amsgrad, *rounded(hyper, dtype))
  for g, w, name in zip(got, want, ("param", "m", "v", "vhat")):
    if w is None:
      assert g is None, name
      continue
    np.testing.assert_allclose(g.numpy(), w, rtol=RTOL[dtype], atol=ATOL[dtype], err_msg=name)
  assert compiled.experimental_get_tracing_count() == 1


def test_adam_step_xla_hyperparameters_as_tensors():
  # Hyperparameters and iteration count fed as tensors into one compiled function.
  @tf.function(jit_compile=True)
  def step(param, grad, m, v, lr, beta_1, beta_2, epsilon, iterations):
    return tf_step(param, grad, m, v, None, lr, beta_1, beta_2, epsilon, iterations, tf.float64)

  param = np.array([1.0, -2.0, 0.5])
  grad = np.array([0.3, -0.1, 2.0])
  m = np.array([0.1, 0.2, -0.3])
  v = np.array([0.01, 0.02, 0.03])
  for lr, beta_1, beta_2, epsilon, iterations in [(0.1, 0.9, 0.999, 1.0, 0),
                                                  (0.01, 0.5, 0.8, 0.1, 7)]:
    got = step(
        *[tf.constant(x, tf.float64) for x in (param, grad, m, v, lr, beta_1, beta_2, epsilon)],
        tf.constant(iterations, tf.int64))
    want = np_adam_step(param, grad, m, v, None, lr, beta_1, beta_2, epsilon, iterations + 1)
    for g, w in zip(got[:3], want[:3]):
      np.testing.assert_allclose(g.numpy(), w, rtol=1e-12)
  assert step.experimental_get_tracing_count() == 1


def test_first_step_moves_by_learning_rate_times_sign():
  # With m = v = 0 and epsilon negligible, the first step is -lr * sign(g) (Keras docstring).
  c = update_rule.step_coefficients(0.1, 0.9, 0.999, 1e-12, 0, tf.float64)
  param = tf.constant([10.0, -3.0, 0.0], tf.float64)
  grad = tf.constant([4.0, -0.002, 1e3], tf.float64)
  zeros = tf.zeros_like(param)
  new_param, _ = update_rule.adam_step(param, grad, update_rule.Moments(zeros, zeros), c)
  np.testing.assert_allclose(new_param.numpy(), [9.9, -2.9, -0.1], rtol=1e-9)


@pytest.mark.parametrize("epsilon", [1.0, 0.1])
def test_epsilon_is_epsilon_hat_not_algorithm_1_epsilon(epsilon):
  # Epsilon is added to sqrt(v) after the bias correction is folded into lr_t. Algorithm 1
  # of the paper (m_hat / (sqrt(v_hat) + epsilon)) gives a clearly different step for
  # epsilon = 1.0 or 0.1; check the formula used is the documented one and not that one.
  lr, beta_1, beta_2, t = 0.05, 0.9, 0.999, 1
  param, grad = np.array([1.0, 2.0]), np.array([0.5, -3.0])
  c = update_rule.step_coefficients(lr, beta_1, beta_2, epsilon, t - 1, tf.float64)
  zeros = tf.zeros(2, tf.float64)
  got, _ = update_rule.adam_step(tf.constant(param), tf.constant(grad),
                                 update_rule.Moments(zeros, zeros), c)
  m = (1 - beta_1) * grad
  v = (1 - beta_2) * grad**2
  epsilon_hat = param - lr * np.sqrt(1 - beta_2**t) / (1 - beta_1**t) * m / (np.sqrt(v) + epsilon)
  algorithm_1 = param - lr * (m / (1 - beta_1**t)) / (np.sqrt(v / (1 - beta_2**t)) + epsilon)
  np.testing.assert_allclose(got.numpy(), epsilon_hat, rtol=1e-12)
  assert np.all(np.abs(got.numpy() - algorithm_1) > 1e-3)


def test_amsgrad_uses_running_max_of_v():
  # v shrinks after a large gradient; vhat keeps the maximum, so the step uses the larger
  # denominator.
  c = update_rule.step_coefficients(0.1, 0.9, 0.5, 1e-8, 3, tf.float64)
  param = tf.constant([1.0], tf.float64)
  grad = tf.constant([0.01], tf.float64)
  m = tf.constant([0.2], tf.float64)
  v = tf.constant([4.0], tf.float64)
  vhat = tf.constant([9.0], tf.float64)
  new_param, moments = update_rule.adam_step(param, grad, update_rule.Moments(m, v, vhat), c)
  want_v = 0.5 * 4.0 + 0.5 * 0.01**2
  np.testing.assert_allclose(moments.v.numpy(), [want_v], rtol=1e-13)
  np.testing.assert_allclose(moments.vhat.numpy(), [9.0], rtol=0)
  want_m = 0.9 * 0.2 + 0.1 * 0.01
  want = 1.0 - np_lr_t(0.1, 0.9, 0.5, 4) * want_m / (np.sqrt(9.0) + 1e-8)
  np.testing.assert_allclose(new_param.numpy(), [want], rtol=1e-13)
  # And without amsgrad the same inputs use v itself.
  plain, plain_moments = update_rule.adam_step(param, grad, update_rule.Moments(m, v), c)
  assert plain_moments.vhat is None
  want_plain = 1.0 - np_lr_t(0.1, 0.9, 0.5, 4) * want_m / (np.sqrt(want_v) + 1e-8)
  np.testing.assert_allclose(plain.numpy(), [want_plain], rtol=1e-13)


def test_adam_step_on_gathered_rows():
  # The lazy sparse path applies adam_step to rows gathered from a table.
  table = np.arange(12.0).reshape(4, 3) / 7.0
  rows = [2, 0]
  grad_rows = np.array([[0.1, -0.2, 0.3], [1.0, 0.0, -1.0]])
  c = update_rule.step_coefficients(0.01, 0.9, 0.999, 1e-7, 0, tf.float32)
  zeros = tf.zeros((2, 3), tf.float32)
  got, moments = update_rule.adam_step(tf.gather(tf.constant(table, tf.float32), rows),
                                       tf.constant(grad_rows, tf.float32),
                                       update_rule.Moments(zeros, zeros, zeros), c)
  table = np.float32(table)  # what the float32 variable holds
  want = np_adam_step(table[rows], np.float32(grad_rows), 0.0, 0.0, np.zeros((2, 3)),
                      *rounded((0.01, 0.9, 0.999, 1e-7), tf.float32), 1)
  np.testing.assert_allclose(got.numpy(), want[0], rtol=1e-6, atol=1e-7)
  np.testing.assert_allclose(moments.m.numpy(), want[1], rtol=1e-6)
  np.testing.assert_allclose(moments.v.numpy(), want[2], rtol=1e-6)
  np.testing.assert_allclose(moments.vhat.numpy(), want[3], rtol=1e-6)


# ---- adam_step_at_rows --------------------------------------------------------------------

# (indices, rows of the gradient): distinct rows, then zero padding repeating the first index
# (the form sparse.sum_duplicates gives), then no rows at all.
ROW_CASES = {
    "distinct": ([3, 0, 5], [[0.5, -1.0], [2.0, 0.25], [-0.75, 0.0]]),
    "zero_padding": ([4, 1, 4, 4], [[1.5, -0.5], [-2.0, 3.0], [0.0, 0.0], [0.0, 0.0]]),
    "empty": ([], np.zeros([0, 2])),
}


def np_decoupled_decay(param, lr, weight_decay):
  return param - lr * weight_decay * param


@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "xla"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("amsgrad", [False, True])
@pytest.mark.parametrize("weight_decay", [0.0, 0.25])
@pytest.mark.parametrize("case", sorted(ROW_CASES))
def test_adam_step_at_rows_is_the_dense_formula(compiled, dtype, amsgrad, weight_decay, case):
  """The dense-mode sparse step equals the formula on the dense gradient (zero off the rows)."""
  indices, rows = ROW_CASES[case]
  rng = np.random.default_rng(5)
  param, m = rng.normal(size=(6, 2)), rng.normal(size=(6, 2))
  v = rng.uniform(0.0, 2.0, size=(6, 2))
  vhat = np.maximum(v, rng.uniform(0.0, 2.0, size=(6, 2))) if amsgrad else None
  hyper = (0.05, 0.9, 0.999, 1e-3)
  np_dtype = dtype.as_numpy_dtype
  param, m, v, rows = (np.asarray(x, np_dtype) for x in (param, m, v, rows))
  vhat = None if vhat is None else np.asarray(vhat, np_dtype)
  grad = np.zeros_like(param, np.float64)
  np.add.at(grad, np.asarray(indices, np.int64), rows)
  lr, beta_1, beta_2, epsilon = rounded(hyper, dtype)
  want = np_adam_step(np_decoupled_decay(np.float64(param), lr, weight_decay), grad, m, v, vhat, lr,
                      beta_1, beta_2, epsilon, t=4)

  def step(param, indices, rows, m, v, vhat):
    c = update_rule.step_coefficients(*hyper, tf.constant(3, tf.int64), dtype,
                                      weight_decay=weight_decay)
    new_param, moments = update_rule.adam_step_at_rows(param, indices, rows,
                                                       update_rule.Moments(m, v, vhat), c)
    return (new_param,) + tuple(moments)

  step = tf.function(step, jit_compile=True) if compiled else step
  got = step(tf.constant(param), tf.constant(indices, tf.int32), tf.constant(rows), tf.constant(m),
             tf.constant(v), None if vhat is None else tf.constant(vhat))
  for g, w, name in zip(got, want, ("param", "m", "v", "vhat")):
    if w is None:
      assert g is None, name
      continue
    np.testing.assert_allclose(g.numpy(), w, rtol=RTOL[dtype], atol=ATOL[dtype], err_msg=name)


if __name__ == "__main__":
  pytest_main.main(__file__)
