"""Tests of packed slots (adam_xla/slots.py): small variables' m and v in shared flat buffers.

Packing is a layout only: the update, `slot()`, checkpoints (keys, values, deferred restore,
async saving) and MirroredStrategy must be exactly what they are with a variable's own slots.
Own slots are obtained by setting `slots.PACK_MAX_ELEMENTS` to 0. The module runs on two
logical CPUs, configured before the TF runtime starts.
"""

import os
from unittest import mock

import numpy as np
import pytest
import tensorflow as tf

from tests import logical_cpus

logical_cpus.require(2)  # before anything starts the TF runtime

import adam_xla  # pylint: disable=wrong-import-position
from adam_xla import cpu_kernel  # pylint: disable=wrong-import-position
from adam_xla import slots  # pylint: disable=wrong-import-position
from tests import numpy_adam  # pylint: disable=wrong-import-position
from tests import pytest_main  # pylint: disable=wrong-import-position

SHAPES = [(7,), (3, 5), (1000,), (), (16, 4)]
STEPS = 5


def _own_slots(monkeypatch):
  monkeypatch.setattr(slots, "PACK_MAX_ELEMENTS", 0)


def _problem(seed=0):
  rng = np.random.default_rng(seed)
  inits = [rng.normal(size=s).astype(np.float32) for s in SHAPES]
  grads = [[rng.normal(size=s).astype(np.float32) for s in SHAPES] for _ in range(STEPS)]
  return inits, grads


def _train(inits, grads, jit_step=True, kernel_when_tracing=True, **adam_args):
  """STEPS steps: variable 1 gets no gradient at step 1, variable 2 (1000 elements) a sparse
  gradient with a repeated index every step, and step 3 is skipped (apply_if False)."""
  variables = [tf.Variable(init) for init in inits]
  opt = adam_xla.Adam(learning_rate=0.01, **adam_args)
  opt.build(variables)

  def apply(grads, step):
    pairs = list(zip(grads, variables))
    ids = tf.constant([3, 3, 999, 0])
    pairs[2] = (tf.IndexedSlices(tf.gather(grads[2], ids), ids, tf.constant([1000])), variables[2])
    if step == 1:
      pairs[1] = (None, variables[1])
    opt.apply_gradients(pairs, apply_if=tf.constant(step != 3))

  with mock.patch.dict(os.environ, {cpu_kernel.ENV_SWITCH: "1" if kernel_when_tracing else "0"}):
    for step, step_grads in enumerate(grads):
      fn = tf.function(apply, jit_compile=True) if jit_step else apply
      fn([tf.constant(g) for g in step_grads], step)
  return variables, opt


def _state(variables, opt):
  return ([v.numpy() for v in variables] +
          [opt.slot(v, name).numpy() for v in variables for name in opt.slot_names])


def _reference(inits, grads, weight_decay=0.0):
  """The float64 formula with the same gradients (sparse ones densified, the skip honoured)."""
  reference = numpy_adam.NumpyAdam(learning_rate=0.01, weight_decay=weight_decay)
  params = [init.astype(np.float64) for init in inits]
  for step, step_grads in enumerate(grads):
    if step == 3:
      continue
    step_grads = list(step_grads)
    dense = np.zeros(1000, np.float32)
    for i in (3, 3, 999, 0):
      dense[i] += step_grads[2][i]
    step_grads[2] = dense
    if step == 1:  # variable 1 has no gradient: it and its moments stay as they are
      held = params[1].copy(), reference.m[1].copy(), reference.v[1].copy()
    reference.step(params, step_grads)
    if step == 1:
      params[1], reference.m[1], reference.v[1] = held
  return params, reference


def test_packed_when_small_float32_on_cpu():
  inits, grads = _problem()
  variables, opt = _train(inits, grads[:1])
  for var in variables:
    assert isinstance(opt.slot(var, "m"), slots.PackedSlot)
  # One buffer each for m and v: every variable's range in one of them.
  assert len({id(opt.slot(var, "m").buffer) for var in variables}) == 1
  for case in (dict(amsgrad=True), dict(sparse_mode="lazy"), dict(jit_compile=False)):
    variables, opt = _train(inits, grads[:1], jit_step=False, **case)
    assert not isinstance(opt.slot(variables[0], "m"), slots.PackedSlot), case


@pytest.mark.parametrize("weight_decay", [0.0, 0.01])
def test_packed_equals_own_slots_bit_for_bit(weight_decay, monkeypatch):
  inits, grads = _problem()
  packed = _state(*_train(inits, grads, weight_decay=weight_decay))
  params, reference = _reference(inits, grads, weight_decay)
  _own_slots(monkeypatch)
  own = _state(*_train(inits, grads, weight_decay=weight_decay))
  for a, b in zip(packed, own):
    np.testing.assert_array_equal(a, b)
  for got, want in zip(packed[:len(SHAPES)], params):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
  for i, m in enumerate(reference.m):
    np.testing.assert_allclose(packed[len(SHAPES) + 2 * i], m, rtol=1e-5, atol=1e-7)


def test_packed_slots_without_the_kernel_follow_the_formula():
  # Packed at build, traced with the kernel switched off: XLA reads and writes the ranges.
  inits, grads = _problem(1)
  variables, opt = _train(inits, grads, kernel_when_tracing=False)
  assert isinstance(opt.slot(variables[0], "m"), slots.PackedSlot)
  params, reference = _reference(inits, grads)
  for var, want in zip(variables, params):
    np.testing.assert_allclose(var.numpy(), want, rtol=1e-5, atol=1e-6)
  for var, v in zip(variables, reference.v):
    np.testing.assert_allclose(opt.slot(var, "v").numpy(), v, rtol=1e-4, atol=1e-9)


def test_slot_view_reads_assigns_and_converts():
  inits, grads = _problem()
  variables, opt = _train(inits, grads[:2])
  view = opt.slot(variables[1], "m")
  assert view.shape == SHAPES[1] and view.dtype == tf.float32
  value = np.arange(15, dtype=np.float32).reshape(3, 5)
  view.assign(value)
  np.testing.assert_array_equal(view.numpy(), value)
  np.testing.assert_array_equal(np.asarray(view), value)
  np.testing.assert_array_equal(tf.function(lambda: view + 1.0)().numpy(), value + 1)
  # Its neighbours' ranges are untouched.
  np.testing.assert_array_equal(
      opt.slot(variables[0], "m").numpy(),
      _state(variables, opt)[len(SHAPES)])
  with pytest.raises(ValueError):
    view.assign(np.zeros(14, np.float32))


def _checkpoint_values(path):
  return {
      name: tf.train.load_variable(path, name) for name, _ in tf.train.list_variables(path)
      if "_slots" in name
  }


@pytest.mark.parametrize("saved_by,restored_into", [("packed", "own"), ("own", "packed")])
@pytest.mark.parametrize("deferred", [False, True])
def test_checkpoints_move_between_layouts(saved_by, restored_into, deferred, tmp_path, monkeypatch):
  inits, grads = _problem(2)

  def train(layout):
    monkeypatch.setattr(slots, "PACK_MAX_ELEMENTS", 0 if layout == "own" else 1 << 20)
    return _train(inits, grads)

  variables, opt = train(saved_by)
  path = tf.train.Checkpoint(optimizer=opt, v=variables).save(str(tmp_path / "ckpt"))
  _, other = train(restored_into)  # same keys and values whichever layout saved them
  other_path = tf.train.Checkpoint(optimizer=other).save(str(tmp_path / "other"))
  saved, resaved = _checkpoint_values(path), _checkpoint_values(other_path)
  assert sorted(saved) == sorted(resaved) and len(saved) == 2 * len(SHAPES)
  for name, value in saved.items():
    np.testing.assert_array_equal(value, resaved[name], err_msg=name)

  monkeypatch.setattr(slots, "PACK_MAX_ELEMENTS", 0 if restored_into == "own" else 1 << 20)
  fresh_vars = [tf.Variable(tf.zeros_like(init)) for init in inits]
  fresh = adam_xla.Adam(learning_rate=0.01)
  checkpoint = tf.train.Checkpoint(optimizer=fresh, v=fresh_vars)
  if deferred:
    status = checkpoint.restore(path)
    fresh.build(fresh_vars)
    status.assert_consumed()
  else:
    fresh.build(fresh_vars)
    checkpoint.restore(path).assert_consumed()
  assert isinstance(fresh.slot(fresh_vars[0], "m"), slots.PackedSlot) == (restored_into == "packed")
  for a, b in zip(_state(variables, opt), _state(fresh_vars, fresh)):
    np.testing.assert_array_equal(a, b)


def test_async_checkpoint_saves_the_values_at_save_time(tmp_path):
  inits, grads = _problem(3)
  variables, opt = _train(inits, grads)
  checkpoint = tf.train.Checkpoint(optimizer=opt)
  expected = _checkpoint_values(checkpoint.save(str(tmp_path / "sync")))
  options = tf.train.CheckpointOptions(experimental_enable_async_checkpoint=True)
  path = checkpoint.save(str(tmp_path / "async"), options=options)
  for var in variables:  # after the save call: must not reach the file
    for name in opt.slot_names:
      opt.slot(var, name).assign(tf.zeros(var.shape))
  checkpoint.sync()
  got = _checkpoint_values(path)
  assert sorted(got) == sorted(expected) and len(got) == 2 * len(SHAPES)
  for name, value in expected.items():
    assert np.any(value != 0), name
    np.testing.assert_array_equal(got[name], value, err_msg=name)


def test_mirrored_restore_and_training_write_every_replica(tmp_path, monkeypatch):
  strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
  inits, grads = _problem(4)
  variables, opt = _train(inits, grads)  # one device, packed
  path = tf.train.Checkpoint(optimizer=opt).save(str(tmp_path / "one_device"))
  with strategy.scope():
    mirrored_vars = [tf.Variable(init) for init in inits]
    mirrored = adam_xla.Adam(learning_rate=0.01)
  status = tf.train.Checkpoint(optimizer=mirrored).restore(path)  # deferred
  with strategy.scope():
    mirrored.build(mirrored_vars)
  status.assert_consumed()
  for var, single in zip(mirrored_vars, variables):
    view = mirrored.slot(var, "m")
    assert isinstance(view.buffer, tf.distribute.DistributedValues)
    copies = [c.numpy() for c in view.values]
    assert len(copies) == 2
    for copy in copies:
      np.testing.assert_array_equal(copy, opt.slot(single, "m").numpy())

  @tf.function
  def step(grads):

    def replica_fn(grads):
      mirrored.apply_gradients(zip(grads, mirrored_vars))

    strategy.run(replica_fn, args=(grads,))

  # Each replica gets half the gradient; summed over replicas it is the whole.
  step(
      strategy.experimental_distribute_values_from_function(
          lambda _: [tf.constant(g / 2) for g in grads[0]]))
  _own_slots(monkeypatch)
  for var in mirrored_vars:
    for name in ("m", "v"):
      copies = [c.numpy() for c in mirrored.slot(var, name).values]
      np.testing.assert_array_equal(copies[0], copies[1])
    np.testing.assert_array_equal(*[c.numpy() for c in var.values])
  own_vars, own = [tf.Variable(init) for init in inits], adam_xla.Adam(learning_rate=0.01)
  tf.train.Checkpoint(optimizer=own).restore(path)
  own.build(own_vars)
  tf.function(lambda g: own.apply_gradients(zip(g, own_vars)),
              jit_compile=True)([tf.constant(g) for g in grads[0]])
  for var, own_var in zip(mirrored_vars, own_vars):
    np.testing.assert_allclose(var.values[0].numpy(), own_var.numpy(), rtol=1e-6, atol=1e-7)


if __name__ == "__main__":
  pytest_main.main(__file__)
