"""Tests for adam_xla/clipping.py against NumPy.

Reference (Keras semantics): clipvalue clips each element to [-v, v]; clipnorm scales each
gradient g by c / max(||g||, c); global_clipnorm scales every gradient by c / max(N, c), N the
norm of all gradients together; with clipvalue and a norm clip, values are clipped first.
Sparse gradients (tf.IndexedSlices with distinct indices) must give the dense result.
"""

import dataclasses

import numpy as np
import pytest
import tensorflow as tf

from adam_xla import clipping
from tests import pytest_main

ClipConfig = clipping.ClipConfig
NUM_ROWS = 6


def np_clip(grads, clipnorm=None, clipvalue=None, global_clipnorm=None):
  grads = [np.asarray(g, np.float64) for g in grads]
  if clipvalue is not None:
    grads = [np.clip(g, -clipvalue, clipvalue) for g in grads]
  if clipnorm is not None:
    grads = [g * clipnorm / max(np.linalg.norm(g.ravel()), clipnorm) for g in grads]
  if global_clipnorm is not None:
    norm = np.sqrt(sum(np.sum(g * g) for g in grads))
    grads = [g * global_clipnorm / max(norm, global_clipnorm) for g in grads]
  return grads


def global_norm(grads):
  return np.sqrt(sum(np.sum(np.square(np.asarray(g, np.float64))) for g in grads))


def make_dense(seed, scale=1.0, dtype=np.float32):
  rng = np.random.default_rng(seed)
  return [(rng.normal(size=s) * scale).astype(dtype) for s in [(3, 4), (5,), ()]]


SPARSE_INDICES = np.array([4, 0, 2])  # distinct, as after sparse.sum_duplicates


def make_mixed(seed, scale=1.0):
  """A dense matrix, a dense vector and the sparse gradient of a [NUM_ROWS, 2] table."""
  rng = np.random.default_rng(seed)
  dense = [(rng.normal(size=s) * scale).astype(np.float32) for s in [(3, 4), (5,)]]
  rows = (rng.normal(size=(len(SPARSE_INDICES), 2)) * scale).astype(np.float32)
  table_grad = np.zeros((NUM_ROWS, 2), np.float32)
  table_grad[SPARSE_INDICES] = rows
  tf_grads = [tf.constant(g) for g in dense] + [
      tf.IndexedSlices(tf.constant(rows), tf.constant(SPARSE_INDICES, tf.int64),
                       tf.constant([NUM_ROWS, 2], tf.int64))
  ]
  return tf_grads, dense + [table_grad]


def densify(grad):
  if isinstance(grad, tf.IndexedSlices):
    dense = np.zeros((NUM_ROWS,) + tuple(grad.values.shape[1:]), np.float64)
    np.add.at(dense, grad.indices.numpy(), grad.values.numpy())
    return dense
  return grad.numpy()


def check(got, want, rtol=1e-6, atol=1e-7):
  assert len(got) == len(want)
  for g, w in zip(got, want):
    np.testing.assert_allclose(densify(g), w, rtol=rtol, atol=atol)


CONFIGS = {
    "none": dict(),
    "clipnorm": dict(clipnorm=1.0),
    "clipvalue": dict(clipvalue=0.5),
    "global_clipnorm": dict(global_clipnorm=2.0),
    "clipvalue_clipnorm": dict(clipvalue=0.5, clipnorm=1.0),
    "clipvalue_global_clipnorm": dict(clipvalue=0.5, global_clipnorm=1.5),
}


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_dense_matches_numpy(name):
  kwargs = CONFIGS[name]
  grads = make_dense(seed=1, scale=2.0)
  # The inputs are large enough that every configured clip is active.
  assert global_norm(grads) > 2.0
  assert all(np.linalg.norm(g.ravel()) > 1.0 for g in grads[:2])
  got = clipping.clip_gradients([tf.constant(g) for g in grads], ClipConfig(**kwargs))
  check(got, np_clip(grads, **kwargs))
  if kwargs:  # and it changed them
    assert any(not np.array_equal(g.numpy(), x) for g, x in zip(got, grads))


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_mixed_dense_and_sparse_match_numpy(name):
  kwargs = CONFIGS[name]
  tf_grads, dense = make_mixed(seed=2, scale=2.0)
  got = clipping.clip_gradients(tf_grads, ClipConfig(**kwargs))
  assert isinstance(got[2], tf.IndexedSlices)
  np.testing.assert_array_equal(got[2].indices.numpy(), SPARSE_INDICES)
  check(got, np_clip(dense, **kwargs))


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_xla_matches_numpy(name):
  kwargs = CONFIGS[name]
  config = ClipConfig(**kwargs)
  grads = make_dense(seed=3, scale=2.0)
  fn = tf.function(lambda *g: clipping.clip_gradients(g, config), jit_compile=True)
  got = fn(*[tf.constant(g) for g in grads])
  check(got, np_clip(grads, **kwargs))


def test_sparse_xla_matches_numpy():
  config = ClipConfig(clipvalue=0.7, global_clipnorm=1.0)
  tf_grads, dense = make_mixed(seed=4, scale=2.0)

  @tf.function(jit_compile=True)
  def fn(a, b, values, indices):
    out = clipping.clip_gradients(
        [a, b, tf.IndexedSlices(values, indices, tf.constant([NUM_ROWS, 2], tf.int64))], config)
    return out[0], out[1], out[2].values, out[2].indices

  a, b, values, indices = fn(tf_grads[0], tf_grads[1], tf_grads[2].values, tf_grads[2].indices)
  got = [a, b, tf.IndexedSlices(values, indices)]
  check(got, np_clip(dense, clipvalue=0.7, global_clipnorm=1.0))


def test_clipnorm_is_per_gradient():
  # One large and one small gradient: only the large one is scaled, to norm exactly c.
  big = np.array([3.0, 4.0], np.float32)  # norm 5
  small = np.array([0.3, 0.4], np.float32)  # norm 0.5
  got = clipping.clip_gradients([tf.constant(big), tf.constant(small)], ClipConfig(clipnorm=1.0))
  np.testing.assert_allclose(got[0].numpy(), [0.6, 0.8], rtol=1e-6)
  np.testing.assert_allclose(np.linalg.norm(got[0].numpy()), 1.0, rtol=1e-6)
  np.testing.assert_allclose(got[1].numpy(), small, rtol=1e-6)


def test_global_clipnorm_scales_all_gradients_together():
  big = np.array([3.0, 4.0], np.float32)
  small = np.array([0.0, 0.5], np.float32)
  # Together: norm sqrt(25 + 0.25); scale c / that for both.
  got = clipping.clip_gradients([tf.constant(big), tf.constant(small)],
                                ClipConfig(global_clipnorm=1.0))
  scale = 1.0 / np.sqrt(25.25)
  np.testing.assert_allclose(got[0].numpy(), big * scale, rtol=1e-6)
  np.testing.assert_allclose(got[1].numpy(), small * scale, rtol=1e-6)
  np.testing.assert_allclose(global_norm([g.numpy() for g in got]), 1.0, rtol=1e-6)


def test_clipvalue_is_applied_before_clipnorm():
  # Value first: [10, 0.1] -> [1, 0.1] -> scaled to norm 1. Norm first would give
  # [0.99995, 0.0099995] (unchanged by clipvalue), which differs in the second element.
  g = np.array([10.0, 0.1], np.float32)
  got = clipping.clip_gradients([tf.constant(g)], ClipConfig(clipvalue=1.0, clipnorm=1.0))
  value_first = np.array([1.0, 0.1]) / np.sqrt(1.01)
  norm_first = np.clip(g / np.linalg.norm(g), -1.0, 1.0)
  np.testing.assert_allclose(got[0].numpy(), value_first, rtol=1e-6)
  assert abs(got[0].numpy()[1] - norm_first[1]) > 0.05


def test_clipvalue_is_applied_before_global_clipnorm():
  g = [np.array([10.0, 0.1], np.float32), np.array([-0.2], np.float32)]
  got = clipping.clip_gradients([tf.constant(x) for x in g],
                                ClipConfig(clipvalue=1.0, global_clipnorm=0.5))
  want = np_clip(g, clipvalue=1.0, global_clipnorm=0.5)
  check(got, want)
  np.testing.assert_allclose(got[1].numpy(), [-0.2 * 0.5 / np.sqrt(1.05)], rtol=1e-6)


def test_clipvalue_bounds_each_element():
  g = np.array([[-3.0, -0.5, 0.0], [0.49, 0.51, 7.0]], np.float32)
  got = clipping.clip_gradients([tf.constant(g)], ClipConfig(clipvalue=0.5))
  want = np.array([[-0.5, -0.5, 0.0], [0.49, 0.5, 0.5]], np.float32)
  np.testing.assert_array_equal(got[0].numpy(), want)


def test_no_clipping_returns_inputs_unchanged():
  tf_grads, dense = make_mixed(seed=5, scale=100.0)
  got = clipping.clip_gradients(tf_grads, ClipConfig())
  assert isinstance(got, list) and len(got) == 3
  for g, w in zip(got, dense):
    np.testing.assert_array_equal(densify(g), w)


def test_accepts_generator_of_gradients():
  grads = make_dense(seed=6, scale=3.0)
  got = clipping.clip_gradients((tf.constant(g) for g in grads), ClipConfig(global_clipnorm=1.0))
  check(got, np_clip(grads, global_clipnorm=1.0))


def test_float64_gradients():
  grads = make_dense(seed=7, scale=2.0, dtype=np.float64)
  for kwargs in CONFIGS.values():
    got = clipping.clip_gradients([tf.constant(g) for g in grads], ClipConfig(**kwargs))
    for g in got:
      assert g.dtype == tf.float64
    check(got, np_clip(grads, **kwargs), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("kwargs",
                         [dict(clipnorm=1.0), dict(global_clipnorm=1.0)],
                         ids=["clipnorm", "global_clipnorm"])
def test_zero_gradients_stay_zero(kwargs):
  got = clipping.clip_gradients([tf.zeros((3,)), tf.zeros((2, 2))], ClipConfig(**kwargs))
  for g in got:
    assert np.all(np.isfinite(g.numpy()))
    np.testing.assert_array_equal(g.numpy(), np.zeros(g.shape))


# ---- Norms whose squares overflow, mixed dtypes, non-finite gradients -----------------------


def run(grads, config, compiled):
  fn = lambda *g: clipping.clip_gradients(g, config)
  if compiled:
    fn = tf.function(fn, jit_compile=True)
  return [g.numpy() for g in fn(*[tf.constant(g) for g in grads])]


@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "xla"])
@pytest.mark.parametrize("dtype,scale", [(np.float32, 1e20), (np.float32, 1e30),
                                         (np.float64, 1e160), (np.float64, 1e300)])
@pytest.mark.parametrize("option", ["clipnorm", "global_clipnorm"])
def test_finite_gradients_whose_squares_overflow_are_clipped(option, dtype, scale, compiled):
  # The squares overflow to inf; the norm is taken of the values over their largest magnitude.
  grads = [np.array([3.0, 0.0, -4.0], dtype) * dtype(scale), np.array([0.0, 1.0], dtype)]
  got = run(grads, ClipConfig(**{option: 2.0}), compiled)
  want = np_clip([g.astype(np.float64) / scale for g in grads[:1]], clipnorm=2.0)[0]
  np.testing.assert_allclose(got[0], want, rtol=1e-6)  # [1.2, 0, -1.6]
  if option == "clipnorm":
    np.testing.assert_array_equal(got[1], grads[1])  # its own norm is below the limit
  else:
    np.testing.assert_allclose(got[1], [0.0, 2.0 / (5 * scale)], rtol=1e-6)
  assert all(g.dtype == dtype for g in got)


def test_overflow_in_one_gradient_leaves_the_others_exact():
  # Under clipnorm only the overflowing gradient takes the rescaled path.
  small = np.array([0.3, 0.4], np.float32)
  got = run([np.array([1e20, 1e20], np.float32), small], ClipConfig(clipnorm=1.0), False)
  np.testing.assert_allclose(got[0], [np.sqrt(0.5)] * 2, rtol=1e-6)
  np.testing.assert_array_equal(got[1], small)


def test_huge_limit_leaves_an_overflowing_gradient_unclipped():
  g = np.array([3e19, 3e19, 3e19], np.float32)  # norm 5.2e19, below the limit
  got = run([g], ClipConfig(clipnorm=1e20), False)
  np.testing.assert_array_equal(got[0], g)


def test_factor_below_the_smallest_normal_is_kept_at_it():
  # norm 5.9e38 / limit 0.01: the factor 1.7e-41 would be subnormal, flushed to 0 (a zero
  # gradient); it is kept at 2^-126 instead, so the gradient shrinks but keeps its direction.
  g = np.full(3, 3.4e38, np.float32)
  got = run([g], ClipConfig(clipnorm=0.01), False)[0]
  np.testing.assert_allclose(got, g * np.float32(2.0**-126), rtol=1e-6)
  assert np.all(np.isfinite(got)) and np.all(got > 0)


@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "xla"])
def test_global_clipnorm_with_mixed_dtypes_uses_float64(compiled):
  grads = [
      np.array([3.0, 0.0, 4.0], np.float32),
      np.array([1.0, -1.0], np.float64),
      np.array([[2.0]], np.float32)
  ]
  got = run(grads, ClipConfig(global_clipnorm=1.0), compiled)
  want = np_clip(grads, global_clipnorm=1.0)
  assert [g.dtype for g in got] == [np.float32, np.float64, np.float32]
  np.testing.assert_allclose(got[1], want[1], rtol=1e-15)
  for g, w in zip(got, want):
    np.testing.assert_allclose(g, w, rtol=1e-6)


def test_mixed_dtypes_below_the_limit_are_exact_identity():
  grads = [np.array([0.3, 0.1], np.float32), np.array([0.1, -0.2], np.float64)]
  got = run(grads, ClipConfig(global_clipnorm=41.0), False)
  for g, w in zip(got, grads):
    np.testing.assert_array_equal(g, w)


@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "xla"])
@pytest.mark.parametrize("bad", [np.inf, -np.inf, np.nan])
def test_non_finite_element_makes_the_whole_clipped_gradient_nan(bad, compiled):
  # Documented in clipping.py: no norm, so a NaN factor; under global_clipnorm for every
  # gradient. (A zero factor would silently zero the finite elements instead.)
  grads = [np.array([bad, 1.0, 0.0], np.float32), np.array([2.0, 3.0], np.float32)]
  clipnorm = run(grads, ClipConfig(clipnorm=1.0), compiled)
  assert np.all(np.isnan(clipnorm[0]))
  np.testing.assert_allclose(clipnorm[1], np.array([2.0, 3.0]) / np.sqrt(13), rtol=1e-6)
  global_clip = run(grads, ClipConfig(global_clipnorm=1.0), compiled)
  assert all(np.all(np.isnan(g)) for g in global_clip)


def test_clipvalue_makes_infinite_elements_finite_before_the_norm():
  got = run([np.array([np.inf, -1.0], np.float32)], ClipConfig(clipvalue=2.0, clipnorm=1.0), False)
  np.testing.assert_allclose(got[0], np.array([2.0, -1.0]) / np.sqrt(5), rtol=1e-6)


@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "xla"])
def test_empty_sparse_gradient(compiled):
  config = ClipConfig(clipnorm=1.0)

  def fn(values, indices):
    out = clipping.clip_gradients([tf.IndexedSlices(values, indices, tf.constant([4, 2]))], config)
    return out[0].values

  if compiled:
    fn = tf.function(fn, jit_compile=True)
  assert fn(tf.zeros([0, 2]), tf.zeros([0], tf.int32)).shape == (0, 2)


def test_empty_list_of_gradients():
  assert clipping.clip_gradients([], ClipConfig(clipnorm=1.0, global_clipnorm=None)) == []
  assert clipping.clip_gradients([], ClipConfig(global_clipnorm=1.0)) == []


# ---- Below the threshold nothing changes, bit for bit ------------------------------------
#
# Keras' documentation says the gradient is clipped so that its norm is no higher than the
# threshold; a gradient already below it is not clipped and must come back exactly as given
# (the single-device and distributed results, and resumed runs, rely on bit equality).
# Thresholds are typical values; 41.0 is one whose float32 reciprocal times itself is not 1
# (float32(41) * (1 / float32(41)) == 1 - 2^-24), which a scale of c * (1 / c) would expose.


@pytest.mark.parametrize("clipnorm", [1.0, 3.0, 10.0])
def test_clipnorm_below_threshold_is_exact_identity(clipnorm):
  tf_grads, dense = make_mixed(seed=8, scale=1e-3)
  assert all(np.linalg.norm(g.ravel()) < clipnorm for g in dense)
  got = clipping.clip_gradients(tf_grads, ClipConfig(clipnorm=clipnorm))
  for g, w in zip(got, dense):
    np.testing.assert_array_equal(densify(g), w)


@pytest.mark.parametrize("global_clipnorm", [1.0, 5.0, 41.0])
def test_global_clipnorm_below_threshold_is_exact_identity(global_clipnorm):
  tf_grads, dense = make_mixed(seed=9, scale=1e-3)
  assert global_norm(dense) < global_clipnorm
  got = clipping.clip_gradients(tf_grads, ClipConfig(global_clipnorm=global_clipnorm))
  for g, w in zip(got, dense):
    np.testing.assert_array_equal(densify(g), w)


def test_clipvalue_within_bound_is_exact_identity():
  tf_grads, dense = make_mixed(seed=10, scale=1e-3)
  got = clipping.clip_gradients(tf_grads, ClipConfig(clipvalue=0.5))
  for g, w in zip(got, dense):
    np.testing.assert_array_equal(densify(g), w)


def test_clip_config_defaults_and_is_frozen():
  config = ClipConfig()
  assert (config.clipnorm, config.clipvalue, config.global_clipnorm) == (None, None, None)
  with pytest.raises(dataclasses.FrozenInstanceError):
    config.clipnorm = 1.0


if __name__ == "__main__":
  pytest_main.main(__file__)
