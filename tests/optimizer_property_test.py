"""Property-based tests (hypothesis) of adam_xla.Adam's public API.

Random shapes, dtypes, hyperparameters and gradients must give finite results equal to the
float64 NumPy reference (tests/numpy_adam.py), within a bound on the rounding of the variable's
dtype, or a clear error naming the bad argument: never a crash or a silent NaN. Examples are
derandomized, so CI sees the same ones on every run. The bugs these tests found are pinned by
the regression tests at the end of the file.
"""

import math
import os

import hypothesis
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
import numpy as np
import pytest
import tensorflow as tf

import adam_xla
from tests import numpy_adam
from tests import pytest_main

if "TEST_TMPDIR" in os.environ:
  # Under Bazel, Hypothesis's caches go to the test's scratch space, not the runfiles tree.
  hypothesis.configuration.set_hypothesis_home_dir(
      os.path.join(os.environ["TEST_TMPDIR"], ".hypothesis"))

# Eager TF on two slow cores: example counts are kept modest, and no example may time out.
_SETTINGS = dict(deadline=None, derandomize=True, database=None,
                 suppress_health_check=[hypothesis.HealthCheck.too_slow])


def _examples(count):
  return hypothesis.settings(max_examples=count, **_SETTINGS)


# ---- Strategies ------------------------------------------------------------------------------


def _f32(x):
  """Rounds to float32, so that the reference and a float32 run use the very same number."""
  return float(np.float32(x))


def _log_uniform(low_exponent, high_exponent):
  return st.floats(low_exponent, high_exponent).map(lambda e: 10.0**e)


SHAPES = st.lists(st.integers(1, 3), max_size=3).map(tuple)
DTYPES = st.sampled_from([np.float32, np.float64])
CLIP_OPTIONS = ("none", "clipnorm", "clipvalue", "global_clipnorm", "clipvalue+clipnorm",
                "clipvalue+global_clipnorm")
# The range of gradient magnitudes (powers of ten) that the dtype can square and sum.
_GRAD_EXPONENTS = {np.float32: (-3, 12), np.float64: (-3, 100)}
_EPSILON_EXPONENTS = {np.float32: (-20, 1), np.float64: (-40, 1)}


def _numbers(low_exponent, high_exponent):
  """Zero, or either sign with a log-uniform magnitude."""
  magnitude = _log_uniform(low_exponent, high_exponent)
  return st.one_of(st.just(0.0), st.builds(lambda s, m: s * m, st.sampled_from([-1, 1]), magnitude))


def _arrays(draw, dtype, shape, exponents):
  return draw(hnp.arrays(dtype, shape, elements=_numbers(*exponents).map(dtype)))


@st.composite
def hyperparameters(draw, dtype, clip_options=CLIP_OPTIONS):
  """Valid keyword arguments shared by adam_xla.Adam and NumpyAdam.

  For float32 variables the numbers are float32 ones, so that the test checks the arithmetic
  rather than the rounding of 0.999; float64 ones must be used exactly. The learning rate is
  always a float32 number, since the optimizer keeps it in a float32 variable (as Keras).
  """
  exact = _f32 if dtype == np.float32 else float
  betas = st.one_of(st.sampled_from([0.0, 0.5, 0.9, 0.999]), st.floats(0.0, 0.999)).map(exact)
  kwargs = {
      "learning_rate": draw(
          st.one_of(st.sampled_from([0.0, 1e-3, 0.1, 1.0]), st.floats(1e-4, 1.0)).map(_f32)),
      "beta_1": draw(betas),
      "beta_2": draw(betas),
      "epsilon": draw(
          st.one_of(st.sampled_from([1e-7, 1.0]),
                    _log_uniform(*_EPSILON_EXPONENTS[dtype])).map(exact)),
      "amsgrad": draw(st.booleans()),
      "weight_decay": draw(st.one_of(st.just(0.0), st.floats(0.0, 0.5)).map(exact)),
  }
  clip = draw(st.sampled_from(clip_options))
  limits = _log_uniform(-2, 2).map(exact)
  for option in clip.split("+"):
    if option != "none":
      kwargs[option] = draw(limits)
  return kwargs


# ---- The reference, with a bound on the rounding of the dtype ------------------------------


class _Reference:
  """NumpyAdam, plus per-element bounds on how far a float32/float64 run may drift from it.

  Each Adam step changes an element by at most lr_t * |m|_abs / (sqrt(v) + epsilon), where
  |m|_abs is the first moment of the absolute (clipped) gradients: rounding in m is relative
  to it even when m itself cancels. A shadow NumpyAdam fed |g| computes it, since clipping
  commutes with the absolute value. The bias correction 1 - beta^t cancels, which multiplies
  the rounding of lr_t by up to 1 / (1 - beta); parameters round relative to their size.
  Cases whose numbers leave the dtype's normal range (overflow, or underflow that the float64
  reference does not see) are rejected with `assume`: those are range limits, not bugs.
  """

  def __init__(self, hyper, init, lazy=False):
    self.hyper = hyper
    self.dtypes = [np.asarray(x).dtype.type for x in init]
    # The narrowest dtype bounds the range that the whole case (clipping mixes them) may use.
    self.dtype = _narrowest(self.dtypes)
    self.params = [np.array(x, np.float64) for x in init]
    self.ref = numpy_adam.NumpyAdam(**hyper, lazy=lazy)
    self.shadow = numpy_adam.NumpyAdam(**hyper, lazy=lazy)
    self.shadow_params = [np.zeros_like(p) for p in self.params]
    self.update_budget = [np.zeros_like(p) for p in self.params]
    self.param_budget = [np.array(np.abs(p)) for p in self.params]

  def step(self, grads, touched_rows=None):
    grads = [np.asarray(g, np.float64) for g in grads]
    finfo = np.finfo(self.dtype)
    if "clipnorm" not in self.hyper and "global_clipnorm" not in self.hyper:
      # Without a norm clip, v = g^2 itself must fit; with one, only the clipped values do.
      _assume_within(sum(np.sum(np.nan_to_num(g * g, posinf=0.0)) for g in grads) / finfo.max)
    before = [p.copy() for p in self.params]
    with np.errstate(invalid="ignore", over="ignore"):
      self.ref.step(self.params, grads, touched_rows)
      self.shadow.step(self.shadow_params, [np.abs(g) for g in grads], touched_rows)
    h, t = self.hyper, self.ref.iterations
    lr_t = h["learning_rate"] * math.sqrt(1 - h["beta_2"]**t) / (1 - h["beta_1"]**t)
    for i, p in enumerate(self.params):
      second = self.ref.vhat[i] if h["amsgrad"] else self.ref.v[i]
      mabs = self.shadow.m[i]
      with np.errstate(invalid="ignore", over="ignore"):
        bound = (lr_t * mabs / (np.sqrt(second) + h["epsilon"]) +
                 h["learning_rate"] * h["weight_decay"] * np.abs(before[i]))
      for x in (p, self.ref.m[i], second, lr_t * mabs, bound):
        _assume_normal(x, finfo)
      rows = Ellipsis if touched_rows is None else np.unique(touched_rows[i]).astype(int)
      self.update_budget[i][rows] += bound[rows]
      self.param_budget[i][rows] += np.abs(p[rows]) + np.abs(before[i][rows])

  def tolerances(self):
    """Per-element bounds for (params, m, v): generous multiples of the rounding analysis."""
    h, steps = self.hyper, self.ref.iterations
    amplifier = 4 + steps + 1 / (1 - h["beta_1"]) + 1 / (1 - h["beta_2"])
    finfo = [np.finfo(d) for d in self.dtypes]
    params = [
        4 * f.eps * (amplifier * u + p) + f.tiny
        for f, u, p in zip(finfo, self.update_budget, self.param_budget)
    ]
    moments = lambda xs: [16 * f.eps * (steps + 1) * np.abs(x) + f.tiny for f, x in zip(finfo, xs)]
    return params, moments(self.shadow.m), moments(self.ref.v)


def _narrowest(dtypes):
  return np.float32 if np.float32 in dtypes else np.float64


def _assume_within(ratio_to_max):
  hypothesis.assume(ratio_to_max < 1e-4)


def _assume_normal(x, finfo):
  """Finite values stay far from overflow, and nonzero ones far from the subnormals."""
  x = np.abs(np.asarray(x, np.float64))
  x = x[np.isfinite(x) & (x > 0)]
  if x.size:
    hypothesis.assume(x.max() < finfo.max * 1e-4 and x.min() > finfo.tiny * 1e4)


def _assert_close(actual, expected, tolerance, what):
  actual = np.asarray(actual, np.float64)
  assert np.all(np.isfinite(actual)), f"{what}: not finite: {actual}"
  error = np.abs(actual - expected)
  worst = np.unravel_index(np.argmax(error - tolerance), error.shape) if error.size else ()
  assert np.all(error <= tolerance), (
      f"{what}: {actual[worst]} vs reference {expected[worst]} (error {error[worst]:.3g} > "
      f"tolerance {tolerance[worst]:.3g} at {worst})")


def _assert_matches(opt, variables, reference):
  param_tol, m_tol, v_tol = reference.tolerances()
  assert int(opt.iterations.numpy()) == reference.ref.iterations
  for i, var in enumerate(variables):
    _assert_close(var.numpy(), reference.params[i], param_tol[i], f"variable {i}")
    _assert_close(opt.slot(var, "m").numpy(), reference.ref.m[i], m_tol[i], f"m of {i}")
    _assert_close(opt.slot(var, "v").numpy(), reference.ref.v[i], v_tol[i], f"v of {i}")


# ---- Dense gradients -------------------------------------------------------------------------


@st.composite
def dense_cases(draw):
  """1-3 variables of random shape and dtype, 1-4 steps of gradients, and hyperparameters."""
  count = draw(st.integers(1, 3))
  dtypes = draw(st.lists(DTYPES, min_size=count, max_size=count))
  hyper = draw(hyperparameters(_narrowest(dtypes)))
  shapes = draw(st.lists(SHAPES, min_size=count, max_size=count))
  init = [_arrays(draw, d, s, (-3, 3)) for d, s in zip(dtypes, shapes)]
  steps = draw(st.integers(1, 4))
  grads = [[_arrays(draw, d, s, _GRAD_EXPONENTS[d]) for d, s in zip(dtypes, shapes)]
           for _ in range(steps)]
  api = draw(st.sampled_from(["apply_gradients", "minimize"]))
  return hyper, init, grads, api


def _run_dense(case, jit_compile):
  hyper, init, grads, api = case
  reference = _Reference(hyper, init)
  for step_grads in grads:
    reference.step(step_grads)
  opt = adam_xla.Adam(**hyper, jit_compile=jit_compile)
  variables = [tf.Variable(x) for x in init]
  for step_grads in grads:
    if api == "minimize":
      # d/dw sum(g * w) is exactly g, so minimize sees the same gradients as the reference.
      loss = lambda g=step_grads: tf.add_n(
          [tf.cast(tf.reduce_sum(tf.constant(x) * w), tf.float64) for x, w in zip(g, variables)])
      opt.minimize(loss, variables)
    else:
      opt.apply_gradients(zip([tf.constant(g) for g in step_grads], variables))
  _assert_matches(opt, variables, reference)


@_examples(60)
@hypothesis.given(dense_cases())
def test_dense_gradients_match_the_reference(case):
  """Every option and dtype mix, through apply_gradients and minimize, as the float64 formula."""
  _run_dense(case, jit_compile=False)


@_examples(8)
@hypothesis.given(dense_cases())
def test_compiled_update_matches_the_reference(case):
  """The XLA-compiled update (the default) follows the same formula; few examples, as each
  compiles a program."""
  _run_dense(case, jit_compile=True)


@st.composite
def huge_gradient_cases(draw):
  """Finite gradients whose squares overflow their dtype, under clipnorm or global_clipnorm.

  Magnitudes stay below limit * 2^126 (float32) or limit * 2^1022 (float64), above which the
  clip factor would be subnormal and is documented to be kept at the smallest normal number.
  """
  count = draw(st.integers(1, 3))
  dtype = draw(DTYPES)
  hyper = draw(hyperparameters(dtype, clip_options=("clipnorm", "global_clipnorm")))
  shapes = draw(st.lists(SHAPES, min_size=count, max_size=count))
  init = [_arrays(draw, dtype, s, (-3, 3)) for s in shapes]
  exponents = (25, 35) if dtype == np.float32 else (200, 300)
  grads = [
      [_arrays(draw, dtype, s, exponents) for s in shapes] for _ in range(draw(st.integers(1, 2)))
  ]
  return hyper, init, grads, "apply_gradients"


@_examples(25)
@hypothesis.given(huge_gradient_cases())
def test_norm_clipping_of_gradients_whose_squares_overflow(case):
  """Huge finite gradients are clipped as the float64 formula says, not dropped."""
  _run_dense(case, jit_compile=False)


@_examples(4)
@hypothesis.given(huge_gradient_cases())
def test_norm_clipping_of_huge_gradients_under_xla(case):
  """The same inside one XLA-compiled step (clipping included), where the overflow fallback is
  a conditional of the program."""
  hyper, init, grads, _ = case
  reference = _Reference(hyper, init)
  opt = adam_xla.Adam(**hyper, jit_compile=False)
  variables = [tf.Variable(x) for x in init]
  step = _compiled(lambda *g: opt.apply_gradients(zip(g, variables)))
  for step_grads in grads:
    reference.step(step_grads)
    step(*[tf.constant(g) for g in step_grads])
  _assert_matches(opt, variables, reference)


# ---- Sparse gradients ------------------------------------------------------------------------


@st.composite
def sparse_cases(draw):
  """A table, 1-3 steps of IndexedSlices with repeated indices, and a sparse mode.

  Values are small integers times a power of two, so that summing repeated indices is exact
  in float32 too: the test checks what the optimizer does with the sum, not float addition.
  """
  dtype = draw(DTYPES)
  mode = draw(st.sampled_from(["dense", "lazy"]))
  hyper = draw(hyperparameters(dtype))
  rows = draw(st.integers(1, 5))
  shape = (rows,) + draw(st.lists(st.integers(1, 3), max_size=2).map(tuple))
  init = _arrays(draw, dtype, shape, (-3, 3))
  low, high = _GRAD_EXPONENTS[dtype]
  steps = []
  for _ in range(draw(st.integers(1, 3))):
    # Empty IndexedSlices (a batch without ids for this table) included.
    indices = draw(st.lists(st.integers(0, rows - 1), max_size=6))
    scale = 2.0**draw(st.integers(round(low * math.log2(10)), round(high * math.log2(10))))
    values = draw(hnp.arrays(np.int64, (len(indices),) + shape[1:], elements=st.integers(
        -4, 4))).astype(dtype) * dtype(scale)
    index_dtype = draw(st.sampled_from([np.int32, np.int64]))
    steps.append((np.array(indices, index_dtype), values))
  return hyper, mode, init, steps


def _run_sparse(case, where):
  hyper, mode, init, steps = case
  lazy = mode == "lazy"
  reference = _Reference(hyper, [init], lazy=lazy)
  for indices, values in steps:
    dense = np.zeros(init.shape, np.float64)
    np.add.at(dense, indices, values)
    reference.step([dense], [indices] if lazy else None)
  opt = adam_xla.Adam(**hyper, sparse_mode=mode, jit_compile=False)
  var = tf.Variable(init)
  for indices, values in steps:
    grad = tf.IndexedSlices(tf.constant(values), tf.constant(indices),
                            tf.constant(init.shape,
                                        tf.constant(indices).dtype))
    _apply(opt, [(grad, var)], where)
  _assert_matches(opt, [var], reference)
  return mode, init, steps, opt, var


@_examples(50)
@hypothesis.given(sparse_cases())
def test_sparse_gradients_match_the_reference(case):
  """IndexedSlices with duplicate indices: "dense" is the dense update of their sum, "lazy"
  updates only the rows present (weight decay included) and leaves the others bit for bit."""
  mode, init, steps, opt, var = _run_sparse(case, "eager")
  if mode == "lazy":
    untouched = np.setdiff1d(np.arange(init.shape[0]), np.concatenate([i for i, _ in steps]))
    np.testing.assert_array_equal(var.numpy()[untouched], init[untouched])
    np.testing.assert_array_equal(opt.slot(var, "v").numpy()[untouched], 0)


@_examples(8)
@hypothesis.given(sparse_cases())
def test_compiled_sparse_update_matches_the_reference(case):
  """The same inside XLA-compiled steps (dense mode then never builds the dense gradient);
  few examples, as each step compiles a program."""
  _run_sparse(case, "xla")


# ---- Non-finite gradients --------------------------------------------------------------------


@st.composite
def non_finite_cases(draw):
  """A gradient with NaN, inf or -inf at some elements, under each clipping option."""
  dtype = draw(DTYPES)
  hyper = draw(
      hyperparameters(dtype, clip_options=("none", "clipvalue", "clipnorm", "global_clipnorm")))
  shape = draw(SHAPES)
  init = _arrays(draw, dtype, shape, (-3, 3))
  grad = _arrays(draw, dtype, shape, _GRAD_EXPONENTS[dtype])
  bad = draw(hnp.arrays(np.bool_, shape, elements=st.booleans()))
  if not bad.any():
    bad[np.unravel_index(draw(st.integers(0, bad.size - 1)), shape)] = True
  kinds = draw(hnp.arrays(np.int64, shape, elements=st.integers(0, 2)))
  grad = np.where(bad, np.array([np.nan, np.inf, -np.inf], dtype)[kinds], grad)
  return hyper, init, grad


@_examples(40)
@hypothesis.given(non_finite_cases())
def test_non_finite_gradients_propagate_as_documented(case):
  """Non-finite gradients are never dropped silently, and `apply_if` skips them
  (docs/optimizer.md: "Skipping a step, weight decay, clipping", "Differences from Keras").

  Without `apply_if` nothing is filtered (as in Keras): the step is the formula applied to
  the non-finite numbers, so every element with a NaN or +-inf gradient ends NaN, except
  that `clipvalue` clips +-inf to +-clipvalue (NaN stays NaN). Under `clipnorm` or
  `global_clipnorm` a gradient with an inf or NaN element has no norm: its clip factor is NaN
  and every element ends NaN (adam_xla/clipping.py; Keras's clipnorm zeroes the finite ones
  instead). With `apply_if=all finite`, the step changes nothing at all.
  """
  hyper, init, grad = case
  reference = _Reference(hyper, [init])
  reference.step([grad])
  opt = adam_xla.Adam(**hyper, jit_compile=False)
  var = tf.Variable(init)
  opt.apply_gradients([(tf.constant(grad), var)])
  result, expected = var.numpy(), reference.params[0]
  np.testing.assert_array_equal(np.isnan(result), np.isnan(expected))
  with np.errstate(invalid="ignore"):
    stays_finite = np.isinf(grad) & ("clipvalue" in hyper)
  assert np.all(np.isnan(result[np.isnan(grad) | (np.isinf(grad) & ~stays_finite)]))
  if "clipnorm" in hyper or "global_clipnorm" in hyper:
    assert np.all(np.isnan(result)), result
  finite = ~np.isnan(expected)
  tolerance = reference.tolerances()[0][0]
  _assert_close(result[finite], expected[finite], tolerance[finite], "finite elements")

  skipping = adam_xla.Adam(**hyper, jit_compile=False)
  kept = tf.Variable(init)
  g = tf.constant(grad)
  skipping.apply_gradients([(g, kept)], apply_if=tf.reduce_all(tf.math.is_finite(g)))
  np.testing.assert_array_equal(kept.numpy(), init)
  np.testing.assert_array_equal(skipping.slot(kept, "m").numpy(), 0)
  np.testing.assert_array_equal(skipping.slot(kept, "v").numpy(), 0)
  assert int(skipping.iterations.numpy()) == 0


# ---- Refused inputs --------------------------------------------------------------------------


@_examples(20)
@hypothesis.given(shape=SHAPES, dtype=st.sampled_from([tf.float16, tf.bfloat16]),
                  name=st.from_regex(r"[a-z][a-z0-9_]{0,8}", fullmatch=True), sparse=st.booleans())
def test_low_precision_variables_are_refused_before_any_change(shape, dtype, name, sparse):
  """bfloat16/float16 variables raise a TypeError naming the variable and its dtype, and a
  float32 variable in the same call is left untouched (no slots, no update)."""
  var = tf.Variable(tf.ones(shape, dtype), name=name)
  grad = tf.ones(shape, dtype)
  if sparse and shape:
    grad = tf.IndexedSlices(grad, tf.range(shape[0]), tf.constant(shape))
  companion = tf.Variable([1.0, 2.0], name="companion")
  opt = adam_xla.Adam(jit_compile=False)
  with pytest.raises(TypeError) as error:
    opt.apply_gradients([(tf.ones([2]), companion), (grad, var)])
  message = str(error.value)
  assert f"'{var.name}'" in message and dtype.name in message, message
  np.testing.assert_array_equal(companion.numpy(), [1.0, 2.0])
  with pytest.raises(KeyError):
    opt.slot(companion, "m")


_NON_FINITE = st.sampled_from([float("nan"), float("inf"), float("-inf")])
_NEGATIVE = st.one_of(st.sampled_from([-5e-324, -1.0]),
                      st.floats(max_value=-1e-300, allow_infinity=False))
_NOT_BELOW_ONE = st.one_of(st.sampled_from([1.0, 1.0 + 2**-52]), st.floats(min_value=1.0))
_NOT_POSITIVE = st.one_of(st.sampled_from([0.0, -0.0, -5e-324]), st.floats(max_value=0.0))
_NOT_NUMBERS = st.sampled_from(["0.1", [0.1], True, b"1", {}])
_NOT_BOOLS = st.one_of(st.integers(), st.text(max_size=3), st.none(), st.floats(0, 1))
_KNOWN = ("learning_rate", "beta_1", "beta_2", "epsilon", "amsgrad", "name", "sparse_mode",
          "weight_decay", "jit_compile", "clipnorm", "clipvalue", "global_clipnorm")
_BAD_VALUES = {
    "learning_rate": st.one_of(_NEGATIVE, _NON_FINITE, _NOT_NUMBERS, st.none()),
    "beta_1": st.one_of(_NEGATIVE, _NOT_BELOW_ONE, _NON_FINITE, _NOT_NUMBERS, st.none()),
    "beta_2": st.one_of(_NEGATIVE, _NOT_BELOW_ONE, _NON_FINITE, _NOT_NUMBERS, st.none()),
    "epsilon": st.one_of(_NOT_POSITIVE, _NON_FINITE, _NOT_NUMBERS, st.none()),
    "weight_decay": st.one_of(_NEGATIVE, _NON_FINITE, _NOT_NUMBERS, st.none()),
    # None switches clipping off, so it is not a bad value for these three.
    "clipnorm": st.one_of(_NOT_POSITIVE, _NON_FINITE, _NOT_NUMBERS),
    "clipvalue": st.one_of(_NOT_POSITIVE, _NON_FINITE, _NOT_NUMBERS),
    "global_clipnorm": st.one_of(_NOT_POSITIVE, _NON_FINITE, _NOT_NUMBERS),
    "amsgrad": _NOT_BOOLS,
    "jit_compile": _NOT_BOOLS,
    "sparse_mode": st.one_of(st.text(max_size=6), st.none(),
                             st.integers()).filter(lambda x: x not in ("dense", "lazy")),
    "name": st.one_of(st.just(""), st.integers(), st.none()),
}


@st.composite
def invalid_arguments(draw):
  """Valid hyperparameters with one argument replaced by a bad value (or an unknown one)."""
  kwargs = draw(hyperparameters(np.float32))
  kwargs.pop("global_clipnorm" if "clipnorm" in kwargs else "clipnorm", None)
  key = draw(st.sampled_from(sorted(_BAD_VALUES) + ["unknown"]))
  if key == "unknown":
    key = draw(
        st.from_regex(r"[a-z_][a-z0-9_]{0,12}", fullmatch=True).filter(lambda k: k not in _KNOWN))
    value = draw(st.floats())
  else:
    value = draw(_BAD_VALUES[key])
    if isinstance(value, float) and draw(st.booleans()):
      value = np.float64(value)  # NumPy scalars are numbers too, and must be checked as such
  kwargs[key] = value
  return kwargs, key


_BOUNDARIES = [("beta_1", 1.0), ("beta_2", 1.0), ("learning_rate", -5e-324), ("epsilon", 0.0),
               ("weight_decay", -5e-324), ("clipnorm", 0.0), ("clipvalue", 0.0),
               ("global_clipnorm", 0.0), ("sparse_mode", "Dense")]


def _with_boundaries(test):
  """Pins the values just outside each documented range, which random draws may miss."""
  for key, value in _BOUNDARIES:
    test = hypothesis.example(({key: value}, key))(test)
  return test


@_examples(100)
@_with_boundaries
@hypothesis.given(invalid_arguments())
def test_invalid_arguments_raise_errors_naming_them(case):
  """Each bad argument raises ValueError or TypeError whose message names it, at construction
  (and for learning_rate also on assignment, which keeps the previous value)."""
  kwargs, key = case
  with pytest.raises((ValueError, TypeError)) as error:
    adam_xla.Adam(**kwargs)
  named = f"'{key}'" if key not in _KNOWN else f"`{key}`"
  assert named in str(error.value), str(error.value)
  if key == "learning_rate":
    opt = adam_xla.Adam(0.5, jit_compile=False)
    for built in (False, True):
      if built:
        opt.build([tf.Variable(1.0)])
      with pytest.raises((ValueError, TypeError), match="`learning_rate`"):
        opt.learning_rate = kwargs[key]
      assert float(tf.convert_to_tensor(opt.learning_rate)) == 0.5


@_examples(40)
@hypothesis.given(st.data())
def test_valid_arguments_are_accepted_and_reported(data):
  """The accepted ranges are closed where documented: lr = 0, beta = 0, any clip > 0."""
  dtype = data.draw(DTYPES)
  kwargs = data.draw(hyperparameters(dtype))
  opt = adam_xla.Adam(**kwargs, sparse_mode=data.draw(st.sampled_from(["dense", "lazy"])),
                      jit_compile=False)
  config = opt.get_config()
  for key, value in kwargs.items():
    assert config[key] == pytest.approx(value, rel=1e-7), key


# ---- Regression tests of the bugs these properties found -------------------------------------


def _compiled(fn):
  """`fn` traced and compiled as one XLA program, as inside a compiled train step."""
  return tf.function(fn, jit_compile=True)


def _apply(opt, grads_and_vars, where):
  """Applies one step eagerly, or inside a function compiled with XLA (where="xla")."""
  pairs = list(grads_and_vars)
  if where == "eager":
    return opt.apply_gradients(pairs)
  flat = tf.nest.flatten([g for g, _ in pairs], expand_composites=True)
  structure = [g for g, _ in pairs]

  def step(*tensors):
    grads = tf.nest.pack_sequence_as(structure, list(tensors), expand_composites=True)
    return opt.apply_gradients(zip(grads, [v for _, v in pairs]))

  return _compiled(step)(*flat)


def _step_with_a_zero_gradient(dtype, **kwargs):
  var = tf.Variable(np.ones(3, dtype), name="w")
  opt = adam_xla.Adam(0.1, jit_compile=False, **kwargs)
  opt.apply_gradients([(tf.constant([0.0, 1.0, -2.0], dtype), var)])
  return var.numpy()


def _assert_refused_before_any_change(opt, var, init, grad, pattern):
  with pytest.raises(ValueError, match=pattern) as error:
    opt.apply_gradients([(tf.constant(grad), var)])
  np.testing.assert_array_equal(var.numpy(), init)
  with pytest.raises(KeyError):
    opt.slot(var, "m")
  return str(error.value)


@pytest.mark.parametrize("epsilon", [0.0, -0.0])
def test_epsilon_zero_is_refused_at_construction(epsilon):
  """Keras documents epsilon as a small constant for numerical stability: it must be > 0."""
  with pytest.raises(ValueError, match=r"`epsilon` must be a finite number in \(0.0, inf\)"):
    adam_xla.Adam(epsilon=epsilon)


@pytest.mark.parametrize(
    "epsilon,dtype,problem",
    [
        (1e-50, np.float32, "below the smallest normal number"),  # rounds to 0
        (1e-40, np.float32, "below the smallest normal number"),  # subnormal: flushed to 0 by TF
        (5e-324, np.float64, "below the smallest normal number"),
        (1e39, np.float32, "overflows to inf"),
    ])
def test_epsilon_that_is_not_a_normal_number_of_the_dtype_is_refused(epsilon, dtype, problem):
  """Such an epsilon is 0 (0 / 0 = NaN for a zero gradient element) or inf (nothing moves) in
  the variable's dtype; the error names it, the dtype and the variable, before any change."""
  init = np.ones(3, dtype)
  var = tf.Variable(init, name="w")
  opt = adam_xla.Adam(0.1, epsilon=epsilon, jit_compile=False)
  message = _assert_refused_before_any_change(opt, var, init, np.array([0.0, 1.0, -2.0], dtype),
                                              "`epsilon`")
  assert problem in message and np.dtype(dtype).name in message and "'w:0'" in message, message


@pytest.mark.parametrize("epsilon,dtype", [(1e-50, np.float64),
                                           (float(np.finfo(np.float32).tiny), np.float32)])
def test_tiny_epsilon_that_the_dtype_holds_works(epsilon, dtype):
  result = _step_with_a_zero_gradient(dtype, epsilon=epsilon)
  params = [np.ones(3)]
  numpy_adam.NumpyAdam(0.1, epsilon=epsilon).step(params, [np.array([0.0, 1.0, -2.0])])
  np.testing.assert_allclose(result, params[0], rtol=1e-6)


@pytest.mark.parametrize("key", ["beta_1", "beta_2"])
def test_beta_that_rounds_to_one_in_float32_is_refused(key):
  """1 - 1e-9 < 1, but it is 1.0 in float32: beta_1 would give lr_t = inf (NaN steps) and
  beta_2 lr_t = 0 (a frozen variable). The error names the beta, the dtype, the variable and
  the largest usable value."""
  beta = 1 - 1e-9
  assert beta < 1 and np.float32(beta) == 1
  init = np.ones(3, np.float32)
  var = tf.Variable(init, name="w")
  opt = adam_xla.Adam(0.1, jit_compile=False, **{key: beta})
  message = _assert_refused_before_any_change(opt, var, init, np.ones(3, np.float32), f"`{key}`")
  assert "rounds to 1.0 in float32" in message and "'w:0'" in message, message
  assert "0.99999994" in message, message


@pytest.mark.parametrize("key", ["beta_1", "beta_2"])
def test_beta_that_rounds_to_one_in_float32_works_for_float64(key):
  """float64 holds 1 - 1e-9, so a float64 variable follows the float64 formula."""
  beta = 1 - 1e-9
  var = tf.Variable(np.ones(3), name="w")
  opt = adam_xla.Adam(0.1, jit_compile=False, **{key: beta})
  params = [np.ones(3)]
  reference = numpy_adam.NumpyAdam(0.1, **{key: beta})
  for grad in ([0.0, 1.0, -2.0], [3.0, -1.0, 0.5], [1.0, 1.0, -1.0]):
    opt.apply_gradients([(tf.constant(grad, tf.float64), var)])
    reference.step(params, [np.array(grad)])
  # 1 - beta^t cancels: a one-ulp difference in pow() is ~1e-7 of it.
  np.testing.assert_allclose(var.numpy(), params[0], rtol=1e-6)
  assert np.all(var.numpy() != 1.0)


@st.composite
def near_limit_hyperparameters(draw):
  """A dtype, and betas just below 1 and epsilons from 1e-330 to 1: many break in float32."""
  dtype = draw(DTYPES)
  key = draw(st.sampled_from(["beta_1", "beta_2", "epsilon"]))
  if key == "epsilon":
    value = 10.0**draw(st.floats(-330, 0))
  else:
    value = 1 - 10.0**-draw(st.floats(5, 15))
  return dtype, key, value


@_examples(40)
@hypothesis.given(near_limit_hyperparameters())
def test_betas_and_epsilon_are_refused_exactly_when_the_dtype_breaks_them(case):
  """A beta that is 1.0 in the dtype, or an epsilon that is 0 or subnormal there, raises a
  ValueError naming it; every other value gives a finite step that follows the reference."""
  dtype, key, value = case
  rounded = dtype(value)
  breaks = rounded >= 1 if key != "epsilon" else rounded < np.finfo(dtype).tiny
  grad = np.array([0.0, 1.0, -2.0], dtype)
  try:
    var = tf.Variable(np.ones(3, dtype), name="w")
    opt = adam_xla.Adam(0.1, jit_compile=False, **{key: value})
    opt.apply_gradients([(tf.constant(grad), var)])
  except ValueError as error:
    assert breaks, f"{key}={value!r} refused for {dtype.__name__}: {error}"
    assert f"`{key}`" in str(error)
    return
  assert not breaks, f"{key}={value!r} accepted for {dtype.__name__}: {var.numpy()}"
  hyper = {"learning_rate": _f32(0.1), key: float(rounded)}
  params = [np.ones(3)]
  numpy_adam.NumpyAdam(**hyper).step(params, [grad])
  np.testing.assert_allclose(var.numpy(), params[0], rtol=1e-5 if dtype == np.float32 else 1e-9)


@pytest.mark.parametrize("where", ["eager", "xla"])
def test_global_clipnorm_with_mixed_dtypes(where):
  """Mixed float32/float64 variables under global_clipnorm follow the reference: the norm is
  taken in float64, so the float64 variable keeps float64 precision."""
  init = [np.ones(3, np.float32), np.ones(2, np.float64)]
  grads = [np.array([3.0, 0.0, 4.0], np.float32), np.array([1.0, -1.0])]
  variables = [tf.Variable(x) for x in init]
  opt = adam_xla.Adam(0.1, global_clipnorm=1.0, jit_compile=False)
  for _ in range(2):
    _apply(opt, zip([tf.constant(g) for g in grads], variables), where)
  params = [x.astype(np.float64) for x in init]
  # The learning rate is held in a float32 variable (as in Keras).
  reference = numpy_adam.NumpyAdam(_f32(0.1), global_clipnorm=1.0)
  for _ in range(2):
    reference.step(params, grads)
  np.testing.assert_allclose(variables[0].numpy(), params[0], rtol=1e-6)
  np.testing.assert_allclose(variables[1].numpy(), params[1], rtol=1e-12)
  np.testing.assert_allclose(opt.slot(variables[1], "m").numpy(), reference.m[1], rtol=1e-12)


@pytest.mark.parametrize("where", ["eager", "xla"])
@pytest.mark.parametrize("mode", ["dense", "lazy"])
def test_empty_indexed_slices(mode, where):
  """A batch without ids for a table (an empty IndexedSlices) is a zero gradient in dense
  mode (the rows keep moving with their momentum) and changes no row in lazy mode."""
  init = np.arange(6.0).reshape(3, 2)
  var = tf.Variable(init)
  opt = adam_xla.Adam(0.1, sparse_mode=mode, jit_compile=False)
  shape = tf.constant([3, 2])
  steps = [(np.array([[1.0, -2.0], [0.5, 0.5]]), np.array([0, 2], np.int32)),
           (np.zeros([0, 2]), np.zeros([0], np.int32))]
  params = [init.copy()]
  reference = numpy_adam.NumpyAdam(_f32(0.1), lazy=mode == "lazy")
  for values, indices in steps:
    before = var.numpy()
    _apply(opt, [(tf.IndexedSlices(tf.constant(values), tf.constant(indices), shape), var)], where)
    dense = np.zeros((3, 2))
    np.add.at(dense, indices, values)
    reference.step(params, [dense], [indices])
  assert int(opt.iterations.numpy()) == 2
  np.testing.assert_allclose(var.numpy(), params[0], rtol=1e-12)
  np.testing.assert_allclose(opt.slot(var, "m").numpy(), reference.m[0], rtol=1e-12)
  np.testing.assert_allclose(opt.slot(var, "v").numpy(), reference.v[0], rtol=1e-12)
  if mode == "lazy":
    np.testing.assert_array_equal(var.numpy(), before)
  else:
    assert np.all(var.numpy()[[0, 2]] != before[[0, 2]])


@pytest.mark.parametrize(
    "var_dtype,grad",
    [
        (np.float64, tf.ones([3], tf.float32)),
        (np.float32, np.ones(3)),  # a NumPy float64 array
        (np.float64, [1.0, 1.0, 1.0]),  # a Python list
        (np.float32, tf.ones([3], tf.bfloat16)),
        (np.float32, [1, 1, 1]),  # integers, as Keras casts them too
    ],
    ids=["f32_for_f64", "numpy_f64_for_f32", "list_for_f64", "bf16_for_f32", "ints_for_f32"])
@pytest.mark.parametrize("where", ["eager", "xla"])
def test_gradient_of_another_dtype_is_cast_to_the_variable(var_dtype, grad, where):
  """Keras casts gradients to the variable's dtype, and so does adam_xla."""
  var = tf.Variable(np.zeros(3, var_dtype), name="w")
  opt = adam_xla.Adam(0.1, jit_compile=False)
  if where == "xla":
    grad = tf.convert_to_tensor(grad)
  _apply(opt, [(grad, var)], where)
  # The first step is -lr * sign(g), up to epsilon / sqrt(v) = 3e-6.
  np.testing.assert_allclose(var.numpy(), -0.1, rtol=1e-5)
  assert opt.slot(var, "m").dtype == var.dtype


def test_python_list_gradient_is_converted_at_the_variable_precision():
  """[0.1] for a float64 variable is float64(0.1), not float32(0.1) cast up."""
  var = tf.Variable(np.zeros(2), name="w")
  opt = adam_xla.Adam(0.1, jit_compile=False)
  opt.apply_gradients([([0.1, -0.3], var)])
  np.testing.assert_array_equal(opt.slot(var, "m").numpy(), (1 - 0.9) * np.array([0.1, -0.3]))


@pytest.mark.parametrize(
    "grad",
    [tf.constant([True, False, True]),
     tf.constant(["a", "b", "c"]),
     tf.constant([1j, 1j, 1j])], ids=["bool", "string", "complex"])
def test_gradient_that_is_not_real_numbers_is_refused(grad):
  var = tf.Variable(np.zeros(3, np.float32), name="w")
  with pytest.raises(TypeError, match=rf"'w:0' is {grad.dtype.name}.*real numbers.*float32"):
    adam_xla.Adam(0.1, jit_compile=False).apply_gradients([(grad, var)])
  np.testing.assert_array_equal(var.numpy(), 0.0)


@pytest.mark.parametrize("grad_shape", [(), (1,), (2,), (3, 1), (1, 3)])
@pytest.mark.parametrize("where", ["eager", "xla"])
def test_gradient_of_another_shape_is_refused(grad_shape, where):
  """A gradient whose shape is not the variable's raises a ValueError naming the variable and
  both shapes, before any change (when traced, at trace time): a scalar or (1,) gradient is
  not broadcast, though Keras would broadcast it."""
  var = tf.Variable(np.zeros(3, np.float32), name="w")
  opt = adam_xla.Adam(0.1, jit_compile=False)
  with pytest.raises(ValueError) as error:
    _apply(opt, [(tf.ones(grad_shape), var)], where)
  message = str(error.value)
  assert "'w:0'" in message and str(tf.TensorShape(grad_shape)) in message, message
  assert "(3,)" in message, message
  np.testing.assert_array_equal(var.numpy(), 0.0)
  with pytest.raises(KeyError):
    opt.slot(var, "m")


@pytest.mark.parametrize("values_shape", [(2,), (2, 3), (2, 2, 1)])
def test_indexed_slices_whose_rows_do_not_fit_are_refused(values_shape):
  var = tf.Variable(np.zeros((4, 2), np.float32), name="table")
  grad = tf.IndexedSlices(tf.ones(values_shape), tf.constant([0, 1]), tf.constant([4, 2]))
  with pytest.raises(ValueError, match=r"'table:0'.*rows.*\(2,\)"):
    adam_xla.Adam(0.1, jit_compile=False).apply_gradients([(grad, var)])


@pytest.mark.parametrize("where", ["eager", "xla"])
@pytest.mark.parametrize("dtype,scale", [(np.float32, 1e20), (np.float32, 1e37),
                                         (np.float64, 1e200)])
@pytest.mark.parametrize("option", ["clipnorm", "global_clipnorm"])
def test_clipping_a_gradient_whose_squared_norm_overflows(option, dtype, scale, where):
  """A huge finite gradient is clipped to the limit, not dropped: its squares overflow, so
  the norm is taken of the values divided by their largest magnitude."""
  var = tf.Variable(np.zeros(2, dtype))
  opt = adam_xla.Adam(0.1, jit_compile=False, **{option: 1.0})
  _apply(opt, [(tf.constant(np.array([scale, -scale], dtype)), var)], where)
  np.testing.assert_allclose(var.numpy(), [-0.1, 0.1], rtol=1e-5)
  # m = (1 - beta_1) * clipped gradient, and the clipped gradient has norm 1.
  np.testing.assert_allclose(
      opt.slot(var, "m").numpy(), 0.1 * np.array([1, -1]) / np.sqrt(2), rtol=1e-5)


if __name__ == "__main__":
  pytest_main.main(__file__)
