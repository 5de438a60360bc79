"""Tests for adam_xla/cpu_kernel.py (and cpu_kernel.cc): the one-pass CPU update.

It must compute what update_rule.adam_step computes (the same operations in the same order,
so within float32 roundings), agree with the float64 NumPy reference, update the variables in
place inside the XLA program, and be used only where it applies, with XLA's own loops
everywhere else. The same for the rows kernel against update_rule.adam_step_at_rows (dense
mode of a sparse gradient).
"""

import os

import numpy as np
import pytest
import tensorflow as tf

import adam_xla
from adam_xla import cpu_kernel
from adam_xla import engine
from adam_xla import slots
from adam_xla import sparse
from adam_xla import update_rule
from tests import numpy_adam
from tests import pytest_main

# Sizes around the vector widths (8 and 16 floats) and the kernel's tail loop, and 2-D shapes.
SHAPES = [(), (1,), (7,), (8,), (17,), (1001,), (64, 33)]
STEPS = 6
# Both compute in float32 with the same operations; XLA may order or fuse a multiply-add
# differently, so elements can differ by a rounding or two (of the array's largest value).
RTOL = 2e-6


def _problem(shape, seed):
  rng = np.random.default_rng(seed)
  init = rng.normal(size=shape).astype(np.float32)
  grads = [rng.normal(size=shape).astype(np.float32) for _ in range(STEPS)]
  return init, grads


def _run_rule(inits, grads, hyper, weight_decay, decays, use_kernel, packed=False):
  """STEPS steps of several variables in one jit function, by one call of the kernel or by
  update_rule.adam_step per variable. grads[step][i] is variable i's gradient at that step.
  With `packed`, the kernel finds every m in one flat buffer and every v in another."""
  learning_rate, beta_1, beta_2, epsilon = hyper
  params = [tf.Variable(init) for init in inits]
  ms = [tf.Variable(tf.zeros_like(init)) for init in inits]
  vs = [tf.Variable(tf.zeros_like(init)) for init in inits]
  sizes = [init.size for init in inits]
  offsets = np.cumsum([0] + sizes).tolist()
  flat_m, flat_v = (tf.Variable(tf.zeros([offsets[-1]])) for _ in range(2))

  @tf.function(jit_compile=True)
  def step(step_grads, iterations):
    c = update_rule.step_coefficients(learning_rate, beta_1, beta_2, epsilon, iterations,
                                      tf.float32, weight_decay=weight_decay)
    if use_kernel and packed:
      layouts = [(0, 1, offset) for offset in offsets[:-1]]
      new_params, (new_m, new_v) = cpu_kernel.adam_steps(params, step_grads, [flat_m, flat_v],
                                                         layouts, decays, c)
      flat_m.assign(new_m)
      flat_v.assign(new_v)
      results = [(p, tf.reshape(new_m[o:o + n], p.shape), tf.reshape(new_v[o:o + n], p.shape))
                 for p, o, n in zip(new_params, offsets, sizes)]
    elif use_kernel:
      buffers = [tf.reshape(t, [n]) for m, v, n in zip(ms, vs, sizes) for t in (m, v)]
      layouts = [(2 * i, 2 * i + 1, 0) for i in range(len(params))]
      new_params, new_buffers = cpu_kernel.adam_steps(params, step_grads, buffers, layouts, decays,
                                                      c)
      results = [(p, new_buffers[2 * i], new_buffers[2 * i + 1]) for i, p in enumerate(new_params)]
    else:
      results = []
      for param, grad, m, v, decay in zip(params, step_grads, ms, vs, decays):
        new_param, moments = update_rule.adam_step(param, grad, update_rule.Moments(m, v),
                                                   c if decay else c._replace(decay=None))
        results.append((new_param, moments.m, moments.v))
    for targets, values in zip(zip(params, ms, vs), results):
      for target, value in zip(targets, values):
        target.assign(tf.reshape(value, target.shape))

  for iterations, step_grads in enumerate(grads):
    step([tf.constant(g) for g in step_grads], tf.constant(iterations, tf.int64))
  return [(p.numpy(), m.numpy(), v.numpy()) for p, m, v in zip(params, ms, vs)]


def _assert_close(by_kernel, by_xla):
  for kernel_values, xla_values in zip(by_kernel, by_xla):
    for kernel_value, xla_value in zip(kernel_values, xla_values):
      scale = np.max(np.abs(xla_value))
      np.testing.assert_allclose(kernel_value, xla_value, rtol=RTOL, atol=RTOL * scale)


@pytest.fixture(autouse=True, scope="module")
def _kernel_built():
  if not cpu_kernel.load():
    reason = cpu_kernel._state["reason"]  # pylint: disable=protected-access
    if reason.startswith("no C++ compiler"):
      pytest.skip(f"the kernel cannot be built here: {reason}")  # the documented fallback
    pytest.fail(f"the kernel did not build or load: {reason}")


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("weight_decay", [0.0, 0.01])
@pytest.mark.parametrize("hyper", [(0.001, 0.9, 0.999, 1e-7), (0.05, 0.5, 0.9, 1.0)])
def test_matches_update_rule_within_rounding(shape, weight_decay, hyper):
  init, grads = _problem(shape, seed=len(shape) + int(weight_decay * 100))
  steps = [[g] for g in grads]
  by_kernel = _run_rule([init], steps, hyper, weight_decay, [True], use_kernel=True)
  by_xla = _run_rule([init], steps, hyper, weight_decay, [True], use_kernel=False)
  _assert_close(by_kernel, by_xla)
  assert not np.array_equal(by_kernel[0][0], init)


def test_several_tensors_in_one_call_split_over_two_threads():
  # 300k elements in all: above the kernel's split threshold (2^18), and the split point
  # falls inside the third tensor. Decay applies to some tensors only.
  shapes = [(100003,), (40001,), (131075,), (17,), (64, 33), (26000,)]
  decays = [True, False, True, False, True, False]
  problems = [_problem(shape, seed=i) for i, shape in enumerate(shapes)]
  inits = [init for init, _ in problems]
  steps = [[grads[k] for _, grads in problems] for k in range(STEPS)]
  hyper = (0.01, 0.9, 0.999, 1e-7)
  by_kernel = _run_rule(inits, steps, hyper, 0.01, decays, use_kernel=True)
  by_xla = _run_rule(inits, steps, hyper, 0.01, decays, use_kernel=False)
  _assert_close(by_kernel, by_xla)
  # m and v read and written by offset in shared buffers: the very same values.
  packed = _run_rule(inits, steps, hyper, 0.01, decays, use_kernel=True, packed=True)
  for own, shared in zip(by_kernel, packed):
    for a, b in zip(own, shared):
      np.testing.assert_array_equal(a, b)
  # Decay matters: the same run with decay everywhere differs on the tensors without it.
  all_decay = _run_rule(inits, steps, hyper, 0.01, [True] * len(shapes), use_kernel=True)
  assert not np.allclose(all_decay[1][0], by_kernel[1][0], rtol=1e-6, atol=0)
  np.testing.assert_array_equal(all_decay[0][0], by_kernel[0][0])


@pytest.mark.parametrize("weight_decay", [0.0, 0.01])
def test_optimizer_agrees_with_numpy_reference(weight_decay):
  init, grads = _problem((1001,), seed=3)
  var = tf.Variable(init)
  optimizer = adam_xla.Adam(learning_rate=0.01, weight_decay=weight_decay)
  reference = numpy_adam.NumpyAdam(learning_rate=0.01, weight_decay=weight_decay)
  params = [init.astype(np.float64)]
  for grad in grads:
    optimizer.apply_gradients([(tf.constant(grad), var)])
    reference.step(params, [grad])
  np.testing.assert_allclose(var.numpy(), params[0], rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(optimizer.slot(var, "m").numpy(), reference.m[0], rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(optimizer.slot(var, "v").numpy(), reference.v[0], rtol=1e-4, atol=1e-9)


def test_apply_if_false_changes_nothing():
  init, grads = _problem((17,), seed=5)
  var = tf.Variable(init)
  optimizer = adam_xla.Adam(learning_rate=0.01)
  optimizer.apply_gradients([(tf.constant(grads[0]), var)])
  before = [t.numpy() for t in (var, optimizer.slot(var, "m"), optimizer.slot(var, "v"))]
  optimizer.apply_gradients([(tf.constant(grads[1]), var)], apply_if=tf.constant(False))
  after = [t.numpy() for t in (var, optimizer.slot(var, "m"), optimizer.slot(var, "v"))]
  for old, new in zip(before, after):
    np.testing.assert_array_equal(old, new)
  assert int(optimizer.iterations.numpy()) == 1


@pytest.mark.parametrize("apply", [True, False])
def test_range_of_a_tensor_with_its_state_at_an_offset(apply):
  # Sharded state's layout: elements [start, start + size) of the param, their m and v at
  # `offset` of the buffers.
  rng = np.random.default_rng(11)
  param, grad = (rng.normal(size=(6, 5)).astype(np.float32) for _ in range(2))
  m, v = rng.normal(size=20).astype(np.float32), rng.uniform(size=20).astype(np.float32)
  start, offset, size = 10, 3, 15
  c = update_rule.step_coefficients(0.01, 0.9, 0.999, 1e-7, tf.constant(3, tf.int64), tf.float32)

  @tf.function(jit_compile=True)
  def step():
    return cpu_kernel.adam_steps([tf.constant(param)], [tf.constant(grad)],
                                 [tf.constant(b) for b in (m, v)], [(0, 1, offset, start, size)],
                                 [False], c, tf.constant(apply))

  (new_param,), buffers = step()
  new_param, (new_m, new_v) = new_param.numpy(), (b.numpy() for b in buffers)
  window, elements = slice(offset, offset + size), slice(start, start + size)
  flat, new_flat = param.reshape(-1), new_param.reshape(-1)
  want = flat[elements], m[window], v[window]  # unchanged unless applied
  if apply:
    reference = numpy_adam.NumpyAdam(learning_rate=0.01)
    reference.m, reference.v, reference.vhat = [m[window] + 0.0], [v[window] + 0.0], [None]
    reference.iterations = 3
    [new_elements] = reference.step([flat[elements].astype(np.float64)],
                                    [grad.reshape(-1)[elements]])
    want = new_elements, reference.m[0], reference.v[0]
  for got, expected in zip((new_flat[elements], new_m[window], new_v[window]), want):
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-7)
  # Outside the ranges nothing changed.
  for got, old, inside in ((new_flat, flat, elements), (new_m, m, window), (new_v, v, window)):
    np.testing.assert_array_equal(np.delete(got, inside), np.delete(old, inside))


def test_copy_ranges():
  # Each source, whole, into a range of a destination; the rest of each destination is kept.
  destinations = [np.arange(10, dtype=np.float32), np.arange(4, dtype=np.float32)]
  sources = [100 + np.arange(6, dtype=np.float32), 200 + np.arange(2, dtype=np.float32)]

  @tf.function(jit_compile=True)
  def copy():
    return cpu_kernel.copy_ranges([tf.constant(d) for d in destinations],
                                  [tf.constant(s) for s in sources], [(0, 2, 0), (0, 8, 1),
                                                                      (1, 1, 1)])

  first, second = copy()
  np.testing.assert_array_equal(first.numpy(), [0, 1, 100, 101, 102, 103, 104, 105, 200, 201])
  np.testing.assert_array_equal(second.numpy(), [0, 200, 201, 3])


def _optimized_hlo(optimizer, variables, grads):
  """The optimized HLO of one jit step applying `grads` (a list) to `variables`."""

  @tf.function(jit_compile=True)
  def step(grads):
    optimizer.apply_gradients(zip(grads, variables))

  return step.experimental_get_compiler_ir(grads)(stage="optimized_hlo")


def test_update_is_one_in_place_custom_call_for_all_variables():
  # The three small variables' m and v are packed (two buffers); the large one has its own.
  big = slots.PACK_MAX_ELEMENTS + 1
  shapes = [(1000,), (30, 7), (big,), (5,)]
  variables = [tf.Variable(np.ones(shape, np.float32)) for shape in shapes]
  hlo = _optimized_hlo(adam_xla.Adam(), variables, [tf.ones(shape) for shape in shapes])
  calls = [line for line in hlo.splitlines() if f'custom_call_target="{cpu_kernel.TARGET}"' in line]
  assert len(calls) == 1
  n, buffers = len(shapes), 4  # packed m, packed v, the large variable's m and v
  aliasing = ", ".join([f"{{{i}}}: ({2 * i}, {{}})" for i in range(n)] +
                       [f"{{{n + j}}}: ({2 * n + j}, {{}})" for j in range(buffers)])
  assert f"output_to_operand_aliasing={{{aliasing}}}" in calls[0]
  assert f"f32[{1000 + 210 + 5}]" in calls[0] and f"f32[{big}]" in calls[0]
  # No copy of a variable-sized buffer: the kernel writes straight into the variables' buffers.
  for size in (1000, 210, 1215, big):
    assert not [line for line in hlo.splitlines() if f"f32[{size}]{{0}} copy(" in line]


@pytest.mark.parametrize("gradient", ["dense", "sparse"])
@pytest.mark.parametrize("case", ["amsgrad", "float64", "lazy", "no_jit", "switched_off"])
def test_not_used_where_it_does_not_apply(case, gradient, monkeypatch):
  if case == "lazy" and gradient == "dense":
    pytest.skip("sparse_mode concerns sparse gradients only")
  dtype = np.float64 if case == "float64" else np.float32
  var = tf.Variable(np.ones([10, 4], dtype))
  grad = tf.ones([10, 4], dtype)
  if gradient == "sparse":
    grad = tf.IndexedSlices(tf.ones([2, 4], dtype), tf.constant([1, 3]), tf.constant([10, 4]))
  if case == "switched_off":
    monkeypatch.setenv(cpu_kernel.ENV_SWITCH, "0")
  optimizer = adam_xla.Adam(amsgrad=case == "amsgrad", jit_compile=case != "no_jit",
                            sparse_mode="lazy" if case == "lazy" else "dense")
  hlo = _optimized_hlo(optimizer, [var], [grad])
  assert cpu_kernel.TARGET not in hlo and cpu_kernel.ROWS_TARGET not in hlo
  assert "custom-call" not in hlo


def test_used_in_default_case_through_optimizer():
  var = tf.Variable(np.ones([10, 4], np.float32))
  hlo = _optimized_hlo(adam_xla.Adam(), [var], [tf.ones([10, 4])])
  assert cpu_kernel.TARGET in hlo


# ---- The rows kernel: dense mode of a sparse gradient ----------------------------------------


def _row_gradients(rows, row_shape, seed, entries=24):
  """STEPS sparse gradients of a table: duplicates, the first and last rows, neighbours, and
  one index out of range, summed and zero-padded as the optimizer does (sparse module)."""
  rng = np.random.default_rng(seed)
  grads = []
  for step in range(STEPS):
    ids = rng.integers(0, rows, size=entries - 6)
    ids = np.concatenate([ids, [0, rows - 1, 5, 6, ids[0], rows + 3 + step]])
    values = rng.normal(size=(entries,) + row_shape).astype(np.float32)
    grad = tf.IndexedSlices(tf.constant(values), tf.constant(ids, tf.int64),
                            tf.constant((rows,) + row_shape, tf.int64))
    grads.append(sparse.sum_duplicates(sparse.zero_out_of_range(grad, rows)))
  return grads


def _run_rows(init, grads, hyper, weight_decay, use_kernel, apply_if=None):
  """STEPS dense-mode steps of one table in a jit function, by the rows kernel or by
  XLA's ops (engine.adam_step_at_rows)."""
  learning_rate, beta_1, beta_2, epsilon = hyper
  param, m, v = (tf.Variable(x) for x in (init, np.zeros_like(init), np.zeros_like(init)))

  @tf.function(jit_compile=True)
  def step(indices, values, iterations):
    c = update_rule.step_coefficients(learning_rate, beta_1, beta_2, epsilon, iterations,
                                      tf.float32, weight_decay=weight_decay)
    if use_kernel:
      results = cpu_kernel.adam_step_at_rows(param, indices, values, m, v, c, apply_if)
    else:
      new_param, moments = engine.adam_step_at_rows(param, tf.IndexedSlices(values, indices),
                                                    update_rule.Moments(m, v), c, apply_if)
      results = (new_param, moments.m, moments.v)
    for target, value in zip((param, m, v), results):
      target.assign(value)

  for iterations, grad in enumerate(grads):
    step(grad.indices, grad.values, tf.constant(iterations, tf.int64))
  return [(param.numpy(), m.numpy(), v.numpy())]


@pytest.mark.parametrize("row_shape", [(), (16,), (3, 5)])
@pytest.mark.parametrize("weight_decay", [0.0, 0.01])
@pytest.mark.parametrize("hyper", [(0.001, 0.9, 0.999, 1e-7), (0.05, 0.5, 0.9, 1.0)])
def test_rows_match_update_rule_within_rounding(row_shape, weight_decay, hyper):
  rows = 300
  init = np.random.default_rng(1).normal(size=(rows,) + row_shape).astype(np.float32)
  grads = _row_gradients(rows, row_shape, seed=len(row_shape))
  by_kernel = _run_rows(init, grads, hyper, weight_decay, use_kernel=True)
  by_xla = _run_rows(init, grads, hyper, weight_decay, use_kernel=False)
  _assert_close(by_kernel, by_xla)
  # The rows a gradient touched moved; with weight decay, every row did.
  moved = np.abs(by_kernel[0][0] - init).reshape(rows, -1).max(axis=1) > 0
  touched = np.unique(np.concatenate([g.indices.numpy() for g in grads]))
  touched = touched[touched < rows]
  assert moved[touched].all() and 0 < len(touched) < rows
  assert moved.all() == (weight_decay > 0)


def test_rows_split_over_two_threads():
  rows, row_shape = 20_000, (16,)  # 320k elements: above the kernel's split threshold
  init = np.random.default_rng(2).normal(size=(rows,) + row_shape).astype(np.float32)
  grads = _row_gradients(rows, row_shape, seed=7, entries=4096)
  hyper = (0.01, 0.9, 0.999, 1e-7)
  _assert_close(_run_rows(init, grads, hyper, 0.01, use_kernel=True),
                _run_rows(init, grads, hyper, 0.01, use_kernel=False))


def test_rows_apply_if_false_changes_nothing():
  init = np.random.default_rng(3).normal(size=(50, 4)).astype(np.float32)
  grads = _row_gradients(50, (4,), seed=3)
  hyper = (0.01, 0.9, 0.999, 1e-7)
  ((param, m, v),) = _run_rows(init, grads, hyper, 0.01, use_kernel=True,
                               apply_if=tf.constant(False))
  np.testing.assert_array_equal(param, init)
  assert not m.any() and not v.any()


@pytest.mark.parametrize("weight_decay", [0.0, 0.01])
def test_rows_through_optimizer_agree_with_numpy_reference(weight_decay):
  rows, width = 64, 8
  rng = np.random.default_rng(4)
  init = rng.normal(size=(rows, width)).astype(np.float32)
  table = tf.Variable(init)
  optimizer = adam_xla.Adam(learning_rate=0.01, weight_decay=weight_decay)
  reference = numpy_adam.NumpyAdam(learning_rate=0.01, weight_decay=weight_decay)
  params = [init.astype(np.float64)]

  @tf.function(jit_compile=True)
  def step(ids, values):
    optimizer.apply_gradients([(tf.IndexedSlices(values, ids, tf.shape(table)), table)])

  for _ in range(STEPS):
    ids = rng.integers(0, rows, size=20)  # with repeats, summed as in the dense gradient
    values = rng.normal(size=(20, width)).astype(np.float32)
    step(tf.constant(ids), tf.constant(values))
    dense = np.zeros((rows, width), np.float64)
    np.add.at(dense, ids, values)
    reference.step(params, [dense])
  np.testing.assert_allclose(table.numpy(), params[0], rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(
      optimizer.slot(table, "v").numpy(), reference.v[0], rtol=1e-4, atol=1e-9)


def test_rows_update_is_one_in_place_custom_call():
  table = tf.Variable(np.ones([1000, 16], np.float32))
  grad = tf.IndexedSlices(tf.ones([5, 16]), tf.constant([1, 3, 3, 999, 0]), tf.constant([1000, 16]))
  hlo = _optimized_hlo(adam_xla.Adam(), [table], [grad])
  calls = [
      line for line in hlo.splitlines() if f'custom_call_target="{cpu_kernel.ROWS_TARGET}"' in line
  ]
  assert len(calls) == 1
  assert "output_to_operand_aliasing={{0}: (0, {}), {1}: (1, {}), {2}: (2, {})}" in calls[0]
  assert not [line for line in hlo.splitlines() if "f32[16000]{0} copy(" in line]
  # XLA's own scatters are the summing of duplicate ids (5 rows), none over the table.
  scatters = [line for line in hlo.splitlines() if " scatter(" in line]
  assert scatters and not [line for line in scatters if "[1000,16]" in line]


def test_enabled_reads_switch(monkeypatch):
  for value, expected in (("0", False), ("off", False), ("1", True), ("", True)):
    monkeypatch.setenv(cpu_kernel.ENV_SWITCH, value)
    assert cpu_kernel.enabled() is expected


def test_without_compiler_reports_reason(monkeypatch):
  monkeypatch.setattr(cpu_kernel.shutil, "which", lambda name: None)
  loaded, reason = cpu_kernel._load()  # pylint: disable=protected-access
  assert not loaded
  assert "no C++ compiler" in reason


def test_build_failure_leaves_no_library(tmp_path, monkeypatch):
  monkeypatch.setenv(cpu_kernel.ENV_CACHE_DIR, str(tmp_path))
  path = str(tmp_path / "kernel.so")
  with pytest.raises(RuntimeError, match="failed"):
    cpu_kernel._build(  # pylint: disable=protected-access
        "g++", ["--no-such-option-for-adam-xla"], path)
  assert os.listdir(tmp_path) == []


def test_unwritable_cache_falls_back_to_temporary_directory(tmp_path, monkeypatch):
  blocker = tmp_path / "a_file"
  blocker.write_text("not a directory")
  monkeypatch.delenv(cpu_kernel.ENV_CACHE_DIR, raising=False)
  monkeypatch.setenv("XDG_CACHE_HOME", str(blocker / "cache"))  # cannot be created
  monkeypatch.setattr(cpu_kernel.tempfile, "tempdir", str(tmp_path / "tmp"))
  (tmp_path / "tmp").mkdir()
  # A second copy of the library must not be loaded into this process (XLA aborts on a second
  # registration of the target at another address): record the load instead.
  loaded_paths = []
  monkeypatch.setattr(cpu_kernel.ctypes, "CDLL", lambda path, mode: loaded_paths.append(path))
  loaded, reason = cpu_kernel._load()  # pylint: disable=protected-access
  assert loaded, reason
  built = list((tmp_path / "tmp").glob("adam_xla-*/cpu_kernel-*.so"))
  assert len(built) == 1 and built[0].stat().st_size > 0
  assert loaded_paths == [str(built[0])]


def test_library_path_depends_on_flags(tmp_path, monkeypatch):
  monkeypatch.setenv(cpu_kernel.ENV_CACHE_DIR, str(tmp_path))
  first = cpu_kernel.library_path("g++", ["-O3"])
  assert first.startswith(str(tmp_path))
  assert first == cpu_kernel.library_path("g++", ["-O3"])
  assert first != cpu_kernel.library_path("g++", ["-O2"])


if __name__ == "__main__":
  pytest_main.main(__file__)
