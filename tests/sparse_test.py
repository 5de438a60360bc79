"""Tests for adam_xla/sparse.py, eagerly and inside XLA-compiled functions.

The point of `sum_duplicates` is that it compiles under XLA, where `tf.unique` (a dynamic
shape) does not; every property is checked both ways. The reference is NumPy: `np.add.at`
for densification (it sums repeated indices) and `np.unique` for the distinct indices.
"""

import numpy as np
import pytest
import tensorflow as tf

from adam_xla import sparse
from tests import pytest_main

NUM_ROWS = 10
INDEX_DTYPES = [tf.int32, tf.int64]

# name -> indices; values are random of shape [len(indices)] or [len(indices), 3].
INDEX_CASES = {
    "duplicates": [5, 2, 5, 9, 2, 5, 0],
    "first_not_smallest": [7, 3, 7, 1],
    "all_distinct": [4, 1, 8, 0, 3],
    "all_identical": [6, 6, 6, 6],
    "single": [3],
    "max_row": [9, 9, 0],
}


def np_dense(indices, values, num_rows=NUM_ROWS):
  dense = np.zeros((num_rows,) + values.shape[1:], values.dtype)
  np.add.at(dense, np.asarray(indices), values)
  return dense


def make_grad(indices, index_dtype, row_shape, seed=0):
  rng = np.random.default_rng(seed)
  values = rng.normal(size=(len(indices),) + row_shape).astype(np.float32)
  grad = tf.IndexedSlices(tf.constant(values), tf.constant(indices, index_dtype),
                          tf.constant((NUM_ROWS,) + row_shape, tf.int64))
  return grad, values


def run_sum_duplicates(grad, compiled):
  fn = lambda values, indices: _components(
      sparse.sum_duplicates(tf.IndexedSlices(values, indices, grad.dense_shape)))
  if compiled:
    fn = tf.function(fn, jit_compile=True)
  return fn(grad.values, grad.indices)


def _components(slices):
  return slices.values, slices.indices


def check_sum_duplicates(indices, values, out_values, out_indices):
  """Checks every documented property of `sum_duplicates`' output against NumPy."""
  out_values, out_indices = np.asarray(out_values), np.asarray(out_indices)
  n = len(indices)
  # Same static length as the input.
  assert out_values.shape == values.shape
  assert out_indices.shape == (n,)
  distinct = np.unique(indices)
  k = len(distinct)
  # One entry per distinct index first (each index once), then padding.
  head = out_indices[:k]
  assert len(set(head.tolist())) == k
  np.testing.assert_array_equal(np.sort(head), distinct)
  # Each head entry holds the sum of the values of its index.
  dense = np_dense(indices, values.astype(np.float64))
  np.testing.assert_allclose(out_values[:k], dense[head], rtol=1e-6, atol=1e-6)
  # Padding: index equal to the first entry's index, value exactly zero.
  np.testing.assert_array_equal(out_indices[k:], np.full(n - k, out_indices[0]))
  np.testing.assert_array_equal(out_values[k:], np.zeros_like(out_values[k:]))
  # The densification is unchanged.
  np.testing.assert_allclose(np_dense(out_indices, out_values.astype(np.float64)), dense, rtol=1e-6,
                             atol=1e-6)


# ---- to_dense -----------------------------------------------------------------------------


@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "xla"])
@pytest.mark.parametrize("index_dtype", INDEX_DTYPES)
@pytest.mark.parametrize("row_shape", [(), (3,)], ids=["vector", "table"])
@pytest.mark.parametrize("case", ["duplicates", "all_distinct", "all_identical"])
def test_to_dense_sums_duplicates(compiled, index_dtype, row_shape, case):
  indices = INDEX_CASES[case]
  grad, values = make_grad(indices, index_dtype, row_shape)
  fn = lambda v, i: sparse.to_dense(tf.IndexedSlices(v, i, grad.dense_shape), NUM_ROWS)
  if compiled:
    fn = tf.function(fn, jit_compile=True)
  got = fn(grad.values, grad.indices)
  assert got.shape == (NUM_ROWS,) + row_shape
  np.testing.assert_allclose(got.numpy(), np_dense(indices, values), rtol=1e-6, atol=1e-7)


def test_to_dense_equals_tf_convert_of_indexed_slices():
  # TF's own densification of IndexedSlices (used by tf.convert_to_tensor) agrees.
  grad, _ = make_grad(INDEX_CASES["duplicates"], tf.int64, (3,))
  np.testing.assert_allclose(
      sparse.to_dense(grad, NUM_ROWS).numpy(),
      tf.convert_to_tensor(grad).numpy(), rtol=1e-6, atol=1e-7)


# ---- zero_out_of_range --------------------------------------------------------------------


@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "xla"])
@pytest.mark.parametrize("index_dtype", INDEX_DTYPES)
@pytest.mark.parametrize("row_shape", [(), (3,)], ids=["vector", "table"])
def test_zero_out_of_range_matches_what_the_dense_gradient_drops(compiled, index_dtype, row_shape):
  # Under XLA the dense sum drops ids outside [0, rows); zeroing their values (NaN ones too)
  # keeps the norm of the summed slices equal to that dense gradient's.
  indices = [3, -1, 9, 10, 3, -7, 0]
  grad, values = make_grad(indices, index_dtype, row_shape)
  values[1] = np.nan

  def fn(v, i):
    kept = sparse.zero_out_of_range(tf.IndexedSlices(v, i, grad.dense_shape), NUM_ROWS)
    return _components(kept) + (sparse.sum_duplicates(kept).values,)

  if compiled:
    fn = tf.function(fn, jit_compile=True)
  out_values, out_indices, summed = fn(tf.constant(values), grad.indices)
  inside = np.array([0 <= i < NUM_ROWS for i in indices])
  np.testing.assert_array_equal(out_indices.numpy(), indices)
  np.testing.assert_array_equal(out_values.numpy()[inside], values[inside])
  np.testing.assert_array_equal(out_values.numpy()[~inside], 0.0)
  dense = np_dense(np.asarray(indices)[inside], values[inside])
  np.testing.assert_allclose(np.linalg.norm(summed.numpy()), np.linalg.norm(dense), rtol=1e-6)


# ---- sum_duplicates -----------------------------------------------------------------------


@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "xla"])
@pytest.mark.parametrize("index_dtype", INDEX_DTYPES)
@pytest.mark.parametrize("row_shape", [(), (3,)], ids=["vector", "table"])
@pytest.mark.parametrize("case", sorted(INDEX_CASES))
def test_sum_duplicates(compiled, index_dtype, row_shape, case):
  indices = INDEX_CASES[case]
  grad, values = make_grad(indices, index_dtype, row_shape, seed=len(indices))
  out_values, out_indices = run_sum_duplicates(grad, compiled)
  assert out_indices.dtype == index_dtype
  assert out_values.dtype == tf.float32
  check_sum_duplicates(indices, values, out_values, out_indices)


def test_sum_duplicates_all_distinct_has_no_padding():
  indices = INDEX_CASES["all_distinct"]
  grad, values = make_grad(indices, tf.int32, (3,))
  out_values, out_indices = run_sum_duplicates(grad, compiled=True)
  # Every entry is a real one: each input row appears exactly once, with its own value.
  np.testing.assert_array_equal(np.sort(out_indices.numpy()), np.sort(indices))
  order = {i: k for k, i in enumerate(indices)}
  for k, i in enumerate(out_indices.numpy()):
    np.testing.assert_array_equal(out_values.numpy()[k], values[order[i]])


def test_sum_duplicates_all_identical():
  indices = INDEX_CASES["all_identical"]
  grad, values = make_grad(indices, tf.int64, (3,))
  out_values, out_indices = run_sum_duplicates(grad, compiled=True)
  np.testing.assert_array_equal(out_indices.numpy(), [6, 6, 6, 6])
  np.testing.assert_allclose(out_values.numpy()[0], values.astype(np.float64).sum(0), rtol=1e-6)
  np.testing.assert_array_equal(out_values.numpy()[1:], np.zeros((3, 3), np.float32))


def test_sum_duplicates_keeps_dense_shape():
  grad, _ = make_grad(INDEX_CASES["duplicates"], tf.int64, (3,))
  out = sparse.sum_duplicates(grad)
  np.testing.assert_array_equal(out.dense_shape.numpy(), [NUM_ROWS, 3])


@pytest.mark.parametrize("index_dtype", INDEX_DTYPES)
def test_sum_duplicates_static_shapes_in_graph(index_dtype):
  # Under tf.function the output length must be static (known at trace time), which is what
  # lets XLA compile the lazy update; tf.unique would give [None].
  seen = {}

  @tf.function(jit_compile=True)
  def fn(values, indices):
    out = sparse.sum_duplicates(tf.IndexedSlices(values, indices))
    seen["values"], seen["indices"] = out.values.shape, out.indices.shape
    padded = sparse.first_entry_padding(out)
    seen["padded"] = padded.shape
    return out.values, out.indices, padded

  grad, values = make_grad(INDEX_CASES["duplicates"], index_dtype, (3,))
  out_values, out_indices, _ = fn(grad.values, grad.indices)
  assert seen["values"].as_list() == [7, 3]
  assert seen["indices"].as_list() == [7]
  assert seen["padded"].as_list() == [7, 3]
  check_sum_duplicates(INDEX_CASES["duplicates"], values, out_values, out_indices)


@pytest.mark.parametrize("seed", range(3))
def test_sum_duplicates_random_xla(seed):
  # Larger random cases in one compiled function (same shapes: traced once).
  rng = np.random.default_rng(100 + seed)
  fn = tf.function(lambda v, i: _components(sparse.sum_duplicates(tf.IndexedSlices(v, i))),
                   jit_compile=True)
  for _ in range(3):
    indices = rng.integers(0, 50, size=64)
    values = rng.normal(size=(64, 4)).astype(np.float32)
    out_values, out_indices = fn(tf.constant(values), tf.constant(indices, tf.int64))
    dense = np_dense(indices, values.astype(np.float64), num_rows=50)
    out_dense = np_dense(out_indices.numpy(), out_values.numpy().astype(np.float64), num_rows=50)
    np.testing.assert_allclose(out_dense, dense, rtol=1e-5, atol=1e-5)
    k = len(np.unique(indices))
    assert len(np.unique(out_indices.numpy()[:k])) == k
    np.testing.assert_array_equal(out_indices.numpy()[k:], out_indices.numpy()[0])
    np.testing.assert_array_equal(out_values.numpy()[k:], 0.0)
  assert fn.experimental_get_tracing_count() == 1


@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "xla"])
@pytest.mark.parametrize("index_dtype", INDEX_DTYPES)
@pytest.mark.parametrize("row_shape", [(), (3,)], ids=["vector", "table"])
def test_empty_indexed_slices(compiled, index_dtype, row_shape):
  # A batch without ids for a table: every function returns empty results (and to_dense
  # zeros) instead of failing on a length-1 mask or on entry 0.
  def fn(values, indices):
    grad = tf.IndexedSlices(values, indices, tf.constant((NUM_ROWS,) + row_shape))
    summed = sparse.sum_duplicates(grad)
    return (summed.values, summed.indices, sparse.first_entry_padding(summed),
            sparse.to_dense(grad, NUM_ROWS))

  if compiled:
    fn = tf.function(fn, jit_compile=True)
  values, indices, padded, dense = fn(tf.zeros((0,) + row_shape), tf.zeros([0], index_dtype))
  assert values.shape == (0,) + row_shape and padded.shape == (0,) + row_shape
  assert indices.shape == (0,) and indices.dtype == index_dtype
  np.testing.assert_array_equal(dense.numpy(), np.zeros((NUM_ROWS,) + row_shape))


# ---- first_entry_padding ------------------------------------------------------------------


@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "xla"])
@pytest.mark.parametrize("index_dtype", INDEX_DTYPES)
@pytest.mark.parametrize("row_shape", [(), (3,)], ids=["vector", "table"])
@pytest.mark.parametrize("case", sorted(INDEX_CASES))
def test_first_entry_padding(compiled, index_dtype, row_shape, case):
  indices = INDEX_CASES[case]
  grad, values = make_grad(indices, index_dtype, row_shape, seed=len(indices) + 1)

  def fn(v, i):
    summed = sparse.sum_duplicates(tf.IndexedSlices(v, i))
    return summed.values, summed.indices, sparse.first_entry_padding(summed)

  if compiled:
    fn = tf.function(fn, jit_compile=True)
  out_values, out_indices, padded = [t.numpy() for t in fn(grad.values, grad.indices)]
  k = len(np.unique(indices))
  assert padded.shape == values.shape
  # Real entries keep their value; padding entries repeat entry 0's value.
  np.testing.assert_array_equal(padded[:k], out_values[:k])
  for slot in range(k, len(indices)):
    np.testing.assert_array_equal(padded[slot], out_values[0])
  # So each index's rows in `padded` all hold that index's summed value: a scatter of
  # (out_indices, padded) writes the right value whichever duplicate wins.
  dense = np_dense(indices, values.astype(np.float64))
  np.testing.assert_allclose(padded, dense[out_indices], rtol=1e-6, atol=1e-6)


def test_first_entry_padding_hand_made_input():
  # Input built by hand in sum_duplicates' output form: entries 0..2, then two padding slots
  # carrying entry 0's index (4) and zeros.
  grad = tf.IndexedSlices(tf.constant([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0], [0.0, 0.0], [0.0, 0.0]]),
                          tf.constant([4, 0, 7, 4, 4]))
  for fn in (sparse.first_entry_padding, tf.function(sparse.first_entry_padding, jit_compile=True)):
    got = fn(grad)
    np.testing.assert_array_equal(got.numpy(),
                                  [[1.0, 2.0], [3.0, 4.0], [5.0, 6.0], [1.0, 2.0], [1.0, 2.0]])


def test_scatter_with_padding_writes_correct_rows():
  # The use in the lazy update: scatter_update of per-row results over a table, where
  # padding slots repeat entry 0's row, writes the same value as a dense update would.
  indices = [5, 2, 5, 9, 2, 5, 0]
  grad, values = make_grad(indices, tf.int64, (3,))
  table = tf.Variable(tf.zeros((NUM_ROWS, 3)))

  @tf.function(jit_compile=True)
  def update(values, indices):
    summed = sparse.sum_duplicates(tf.IndexedSlices(values, indices))
    table.scatter_update(tf.IndexedSlices(sparse.first_entry_padding(summed), summed.indices))

  update(grad.values, grad.indices)
  np.testing.assert_allclose(table.numpy(), np_dense(indices, values.astype(np.float64)), rtol=1e-6,
                             atol=1e-6)


if __name__ == "__main__":
  pytest_main.main(__file__)
