"""Tests of adam_xla/train_step.py: the fused step against an unfused reference, per strategy.

The CPU is split into four logical devices before TensorFlow starts, so that MirroredStrategy
runs for real with 2 and 4 replicas; the single-device tests use the first device.
"""

import re

import numpy as np
import pytest
import tensorflow as tf

from tests import logical_cpus

logical_cpus.require(4)  # before anything starts the TF runtime

# pylint: disable=wrong-import-position
import keras

import adam_xla
from adam_xla import distribution
from tests import pytest_main

FEATURES, CLASSES, GLOBAL_BATCH = 6, 3, 16

# One strategy per replica count for the whole module: TF's collective all-reduce keys its
# groups per process, and strategies of different sizes using the same collective implementation
# collide ("joining a group with size 4, but that group has size 2"). So the 2-replica strategy
# uses the default collective all-reduce and the 4-replica one reduces to one device.
MIRRORED = {
    2: tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"]),
    4: tf.distribute.MirroredStrategy(
        [f"/cpu:{i}" for i in range(4)],
        cross_device_ops=tf.distribute.ReductionToOneDevice("/cpu:0")),
}


def _data(seed=0, examples=GLOBAL_BATCH * 8):
  rng = np.random.default_rng(seed)
  x = rng.normal(size=[examples, FEATURES]).astype(np.float32)
  y = (np.argmax(x[:, :CLASSES] + 0.3 * rng.normal(size=[examples, CLASSES]),
                 axis=1).astype(np.int64))
  return x, y


def _dataset(x, y):
  return tf.data.Dataset.from_tensor_slices((x, y)).repeat().batch(GLOBAL_BATCH,
                                                                   drop_remainder=True)


def _model(seed=1):
  keras.utils.set_random_seed(seed)
  return keras.Sequential([
      keras.Input((FEATURES,)),
      keras.layers.Dense(12, activation="tanh", kernel_regularizer=keras.regularizers.L2(1e-3)),
      keras.layers.Dense(CLASSES)
  ])


_LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction=None)


def _reference_run(optimizer_kwargs, steps, x, y, schedule_steps=None):
  """Plain GradientTape + adam_xla.Adam without XLA, one global batch per step."""
  model = _model()
  opt = adam_xla.Adam(jit_compile=False, **optimizer_kwargs)
  batches = iter(_dataset(x, y))
  for _ in range(steps):
    features, labels = next(batches)
    with tf.GradientTape() as tape:
      loss = tf.reduce_sum(_LOSS(labels, model(features, training=True))) / GLOBAL_BATCH
      loss += tf.add_n(model.losses)
    opt.apply_gradients(
        zip(tape.gradient(loss, model.trainable_variables), model.trainable_variables))
  return [v.numpy() for v in model.trainable_variables]


def _fused_run(optimizer_kwargs, steps, x, y, strategy=None, **step_kwargs):
  strategy = strategy or tf.distribute.get_strategy()
  with strategy.scope():
    model = _model()
    opt = adam_xla.Adam(**optimizer_kwargs)
  step = adam_xla.make_train_step(model, _LOSS, opt, strategy=strategy, **step_kwargs)
  iterator = iter(step.distribute(_dataset(x, y)))
  per_call = step.config.steps_per_loop
  assert steps % per_call == 0
  for _ in range(steps // per_call):
    metrics = step(iterator)
  return model, opt, step, metrics


_SCHEDULE = keras.optimizers.schedules.CosineDecay(0.05, decay_steps=40, alpha=0.1)

FUSED_CASES = {
    "default": ({"learning_rate": 0.01}, {}),
    "amsgrad_clipnorm": ({"learning_rate": 0.01, "amsgrad": True, "clipnorm": 0.1}, {}),
    "global_clipnorm_schedule": ({"learning_rate": _SCHEDULE, "global_clipnorm": 0.5}, {}),
    "weight_decay_epsilon": ({"learning_rate": 0.01, "weight_decay": 0.1, "epsilon": 0.1}, {}),
    "accumulation": ({"learning_rate": 0.01}, {"accumulation_steps": 4}),
    "steps_per_loop": ({"learning_rate": 0.01, "amsgrad": True}, {"steps_per_loop": 5}),
    "xla_scope_update": ({"learning_rate": 0.01,
                          "amsgrad": True}, {"xla_scope": "update", "steps_per_loop": 5}),
    "loop_in_program": ({"learning_rate": _SCHEDULE,
                         "clipvalue": 0.05}, {"steps_per_loop": 5, "loop_in_program": True}),
    "everything": ({
        "learning_rate": _SCHEDULE, "amsgrad": True, "global_clipnorm": 0.5, "weight_decay": 0.05
    }, {"steps_per_loop": 5, "accumulation_steps": 2}),
}


@pytest.mark.parametrize("case", sorted(FUSED_CASES))
def test_fused_step_equals_unfused_reference_over_50_steps(case):
  optimizer_kwargs, step_kwargs = FUSED_CASES[case]
  x, y = _data()
  model, opt, _, _ = _fused_run(optimizer_kwargs, 50, x, y, **step_kwargs)
  want = _reference_run(optimizer_kwargs, 50, x, y)
  assert int(opt.iterations.numpy()) == 50
  initial = [v.numpy() for v in _model().trainable_variables]
  for got, ref, start in zip(model.trainable_variables, want, initial):
    np.testing.assert_allclose(got.numpy(), ref, rtol=1e-5, atol=1e-6)
    assert np.max(np.abs(ref - start)) > 1e-2  # training really moved the weights


def test_loss_falls_and_metrics_are_reported():
  x, y = _data()
  model = _model()
  step = adam_xla.make_train_step(model, _LOSS, adam_xla.Adam(0.05), metrics=["accuracy"],
                                  steps_per_loop=8)
  iterator = iter(step.distribute(_dataset(x, y)))
  first = {k: float(v) for k, v in step(iterator).items()}
  for _ in range(5):
    last = {k: float(v) for k, v in step(iterator).items()}
  assert set(first) == {"loss", "accuracy"}
  assert last["loss"] < 0.7 * first["loss"]
  assert last["accuracy"] > first["accuracy"]


def test_reported_loss_and_accuracy_equal_a_direct_computation():
  x, y = _data()
  model = _model()
  step = adam_xla.make_train_step(model, _LOSS, adam_xla.Adam(0.0), metrics=["accuracy"])
  features, labels = x[:GLOBAL_BATCH], y[:GLOBAL_BATCH]
  metrics = step((tf.constant(features), tf.constant(labels)))
  logits = model(features).numpy().astype(np.float64)
  log_softmax = logits - np.log(np.sum(np.exp(logits), axis=1, keepdims=True))
  want_loss = -np.mean(log_softmax[np.arange(GLOBAL_BATCH), labels])
  want_loss += sum(float(penalty) for penalty in model.losses)
  np.testing.assert_allclose(float(metrics["loss"]), want_loss, rtol=1e-5)
  np.testing.assert_allclose(float(metrics["accuracy"]),
                             np.mean(np.argmax(logits, axis=1) == labels), rtol=1e-6)


@pytest.mark.parametrize("replicas", [2, 4])
def test_mirrored_equals_single_device_and_replicas_stay_identical(replicas):
  x, y = _data(3)
  kwargs = {"learning_rate": 0.01, "amsgrad": True, "global_clipnorm": 1.0}
  single, _, _, single_metrics = _fused_run(kwargs, 20, x, y)
  strategy = MIRRORED[replicas]
  mirrored, opt, step, metrics = _fused_run(kwargs, 20, x, y, strategy=strategy)
  assert step.plan == distribution.REPLICA_PROGRAMS
  for a, b in zip(mirrored.trainable_variables, single.trainable_variables):
    components = [c.numpy() for c in a.value.values]
    assert len(components) == replicas
    for c in components[1:]:
      np.testing.assert_array_equal(c, components[0])
    np.testing.assert_allclose(components[0], b.numpy(), rtol=1e-5, atol=1e-7)
  slot = opt.slot(mirrored.trainable_variables[0], "vhat")
  np.testing.assert_array_equal(slot.values[0].numpy(), slot.values[-1].numpy())
  np.testing.assert_allclose(float(metrics["loss"]), float(single_metrics["loss"]), rtol=1e-5)


def test_one_device_strategy_uses_the_single_program_plan():
  x, y = _data()
  strategy = tf.distribute.OneDeviceStrategy("/cpu:1")
  model, _, step, _ = _fused_run({"learning_rate": 0.01}, 10, x, y, strategy=strategy)
  assert step.plan == distribution.SINGLE_PROGRAM
  assert "CPU:1" in model.trainable_variables[0].value.device
  want = _reference_run({"learning_rate": 0.01}, 10, x, y)
  np.testing.assert_allclose(model.trainable_variables[0].numpy(), want[0], rtol=1e-5, atol=1e-6)


def test_traces_once_for_repeated_calls():
  x, y = _data()
  _, _, step, _ = _fused_run({"learning_rate": 0.01}, 30, x, y, steps_per_loop=3)
  assert step.trace_count == 1
  strategy = MIRRORED[2]
  _, _, step, _ = _fused_run({"learning_rate": 0.01}, 6, x, y, strategy=strategy)
  assert step.trace_count == 1


def test_partial_batches_are_warned_about():
  x, y = _data()
  model = _model()
  step = adam_xla.make_train_step(model, _LOSS, adam_xla.Adam())
  with pytest.warns(UserWarning, match="drop_remainder=True"):
    step.distribute(tf.data.Dataset.from_tensor_slices((x, y)).batch(5))


def test_single_program_holds_forward_backward_and_every_update():
  model = _model()
  opt = adam_xla.Adam(0.01, amsgrad=True)
  step = adam_xla.make_train_step(model, _LOSS, opt)
  x, y = _data()
  batch = (tf.constant(x[:GLOBAL_BATCH]), tf.constant(y[:GLOBAL_BATCH]))
  step(batch)
  outer = step._functions.one_batch.get_concrete_function(batch)  # pylint: disable=protected-access
  # The host-side function only calls the compiled program: it reads and writes no variable.
  outer_ops = {op.type for op in outer.graph.get_operations()}
  assert not outer_ops & {
      "ReadVariableOp", "AssignVariableOp", "AssignAddVariableOp", "ResourceScatterUpdate",
      "ResourceGather"
  }, outer_ops
  calls = [
      op for op in outer.graph.get_operations()
      if op.type in ("StatefulPartitionedCall", "PartitionedCall")
  ]
  assert len(calls) == 1 and calls[0].get_attr("_XlaMustCompile")
  # The compiled program: 4 variables (2 kernels, 2 biases), each with m, v and vhat, plus
  # iterations, all updated in it and written back in place.
  text = _find_jit_function(step).experimental_get_compiler_ir(batch)(stage="hlo")
  aliases = re.search(r"input_output_alias=\{(.*?)\}, entry", text).group(1)
  assert aliases.count("may-alias") == 4 * 4 + 1
  assert "dot(" in text and "sqrt(" in text and "maximum(" in text


def _find_jit_function(step):
  """The compiled one-step function of a single-program step, found through closures."""
  pending = [step._functions.one_batch.python_function]  # pylint: disable=protected-access
  while pending:
    for cell in pending.pop().__closure__ or ():
      value = cell.cell_contents
      if isinstance(value, tf.types.experimental.GenericFunction):
        return value
      if callable(value) and getattr(value, "__closure__", None):
        pending.append(value)
  raise AssertionError("no compiled function found")


@pytest.mark.parametrize("replicas", [1, 2])
def test_update_scope_compiles_only_the_update(replicas):
  x, y = _data()
  strategy = MIRRORED[2] if replicas == 2 else tf.distribute.get_strategy()
  model, _, step, _ = _fused_run({"learning_rate": 0.01}, 10, x, y, strategy=strategy,
                                 xla_scope="update")
  want = _reference_run({"learning_rate": 0.01}, 10, x, y)
  for got, ref in zip(model.trainable_variables, want):
    np.testing.assert_allclose(got.numpy(), ref, rtol=1e-5, atol=1e-6)
  iterator = iter(step.distribute(_dataset(x, y)))
  loop = step._functions.loop  # pylint: disable=protected-access
  graph_def = loop.get_concrete_function(iterator).graph.as_graph_def()
  compiled, plain = _ops_by_compilation(graph_def)
  assert "MatMul" in plain and "MatMul" not in compiled  # forward/backward are TF ops
  # The Adam update is compiled: XLA's loops (Sqrt), or on CPU adam_xla's one-pass kernel.
  assert {"Sqrt", "XlaCallModule"} & compiled
  assert "XlaCallModule" not in plain


def _ops_by_compilation(graph_def):
  """(op types inside XLA-compiled functions, op types elsewhere) of a graph and its library."""
  functions = {f.signature.name: f for f in graph_def.library.function}
  compiled, plain = set(), set()

  def visit(nodes, inside_xla):
    for node in nodes:
      (compiled if inside_xla else plain).add(node.op)
      if "f" in node.attr and node.attr["f"].func.name in functions:
        must_compile = node.attr["_XlaMustCompile"].b if "_XlaMustCompile" in node.attr else False
        visit(functions[node.attr["f"].func.name].node_def, inside_xla or must_compile)

  visit(graph_def.node, False)
  return compiled, plain


@pytest.mark.parametrize("plan_strategy", ["default", "mirrored"])
def test_dynamic_loss_scaling_skips_overflowing_steps(plan_strategy):
  strategy = (MIRRORED[2] if plan_strategy == "mirrored" else tf.distribute.get_strategy())
  with strategy.scope():
    model = _model()
    opt = adam_xla.Adam(0.01)
  step = adam_xla.make_train_step(model, _LOSS, opt, strategy=strategy, loss_scaling="dynamic",
                                  initial_loss_scale=2.0**10, loss_scale_growth_interval=2)
  x, y = _data()
  huge = x.copy()
  huge[:GLOBAL_BATCH] = np.inf  # the first global batch gives non-finite gradients
  iterator = iter(step.distribute(_dataset(huge, y)))
  before = [v.numpy() for v in model.trainable_variables]
  out = {k: float(v) for k, v in step(iterator).items()}
  assert out["skipped_steps"] == 1.0 and out["loss_scale"] == 2.0**9
  assert int(opt.iterations.numpy()) == 0
  for v, b in zip(model.trainable_variables, before):
    np.testing.assert_array_equal(v.numpy(), b)
  scales = [float(step(iterator)["loss_scale"]) for _ in range(4)]
  assert scales == [2.0**9, 2.0**10, 2.0**10, 2.0**11]  # doubles after 2 good steps
  assert int(opt.iterations.numpy()) == 4


@pytest.mark.parametrize("plan_strategy", ["default", "mirrored"])
def test_nonfinite_steps_are_skipped_counted_and_named(plan_strategy):
  strategy = (MIRRORED[2] if plan_strategy == "mirrored" else tf.distribute.get_strategy())
  with strategy.scope():
    model = _model()
    opt = adam_xla.Adam(0.01)
  step = adam_xla.make_train_step(model, _LOSS, opt, strategy=strategy, skip_nonfinite=True,
                                  steps_per_loop=2)
  x, y = _data()
  bad = x.copy()
  bad[:2 * GLOBAL_BATCH, 0] = np.nan  # the first two steps: NaN in the first layer's inputs
  iterator = iter(step.distribute(_dataset(bad, y)))
  before = [v.numpy() for v in model.trainable_variables]
  out = step(iterator)
  names = [n.decode() for n in out.pop("nonfinite_variables").numpy()]
  out = {k: float(v) for k, v in out.items()}
  assert out["nonfinite_steps"] == 2.0
  assert int(opt.iterations.numpy()) == 0 and out["consecutive_nonfinite"] == 2
  for v, b in zip(model.trainable_variables, before):  # variables and slots untouched
    np.testing.assert_array_equal(v.numpy(), b)
    np.testing.assert_array_equal(opt.slot(v, "m").numpy(), np.zeros_like(b))
  assert step.nonfinite_counts.numpy().tolist() == [2, 2, 2, 2]  # NaN reaches every gradient
  assert names == [getattr(v, "path", v.name) for v in model.trainable_variables]
  assert len(set(names)) == 4
  assert names[0].endswith("kernel")
  out = step(iterator)
  assert out.pop("nonfinite_variables").numpy().tolist() == []
  out = {k: float(v) for k, v in out.items()}
  assert out["nonfinite_steps"] == 0.0 and np.isfinite(out["loss"])
  assert int(opt.iterations.numpy()) == 2 and out["consecutive_nonfinite"] == 0


def test_loss_scaled_step_equals_unscaled_step():
  x, y = _data()
  model, _, _, _ = _fused_run({"learning_rate": 0.01}, 10, x, y, loss_scaling="dynamic")
  want = _reference_run({"learning_rate": 0.01}, 10, x, y)
  for got, ref in zip(model.trainable_variables, want):
    np.testing.assert_allclose(got.numpy(), ref, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("policy,loss_scaling", [("mixed_bfloat16", None),
                                                 ("mixed_float16", "dynamic")])
def test_mixed_precision_keeps_float32_weights_and_trains(policy, loss_scaling):
  keras.mixed_precision.set_global_policy(policy)
  try:
    model = _model()
  finally:
    keras.mixed_precision.set_global_policy("float32")
  assert model.layers[0].compute_dtype != "float32"
  opt = adam_xla.Adam(0.05)
  step = adam_xla.make_train_step(model, _LOSS, opt, loss_scaling=loss_scaling, steps_per_loop=10)
  iterator = iter(step.distribute(_dataset(*_data())))
  first = float(step(iterator)["loss"])
  for _ in range(4):
    last = float(step(iterator)["loss"])
  assert all(v.dtype == "float32" for v in model.trainable_variables)
  assert opt.slot(model.trainable_variables[0], "m").dtype == tf.float32
  assert np.isfinite(last) and last < 0.8 * first


class _EmbeddingModel(tf.Module):
  """A tf.Module model whose table gradient is a tf.IndexedSlices."""

  def __init__(self):
    super().__init__()
    rng = np.random.default_rng(5)
    self.table = tf.Variable(rng.normal(size=[20, 4]).astype(np.float32))
    self.head = tf.Variable(rng.normal(size=[4, CLASSES]).astype(np.float32))

  def __call__(self, ids):
    return tf.reduce_sum(tf.gather(self.table, ids), axis=1) @ self.head


@pytest.mark.parametrize("sparse_mode", ["dense", "lazy"])
def test_tf_module_with_sparse_gradients(sparse_mode):
  rng = np.random.default_rng(6)
  ids = rng.integers(0, 20, size=[64, 3])
  labels = rng.integers(0, CLASSES, size=[64])
  batches = tf.data.Dataset.from_tensor_slices((ids, labels)).repeat().batch(8)
  model = _EmbeddingModel()
  opt = adam_xla.Adam(0.05, sparse_mode=sparse_mode)
  step = adam_xla.make_train_step(model, _LOSS, opt, steps_per_loop=4)
  step(iter(step.distribute(batches)))

  reference_model = _EmbeddingModel()
  reference = adam_xla.Adam(0.05, sparse_mode=sparse_mode, jit_compile=False)
  for features, target in batches.take(4):
    with tf.GradientTape() as tape:
      loss = tf.reduce_sum(_LOSS(target, reference_model(features))) / 8
    grads = tape.gradient(loss, reference_model.trainable_variables)
    assert any(isinstance(g, tf.IndexedSlices) for g in grads)
    reference.apply_gradients(zip(grads, reference_model.trainable_variables))
  for a, b in zip(model.trainable_variables, reference_model.trainable_variables):
    np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5, atol=1e-6)


BAD_STEP_ARGUMENTS = [
    ({"steps_per_loop": 0}, ValueError, r"`steps_per_loop` must be an integer >= 1"),
    ({"accumulation_steps": 1.5}, ValueError, r"`accumulation_steps`"),
    ({"loss_scaling": "static"}, ValueError, r"`loss_scaling` must be one of"),
    ({"initial_loss_scale": 0.5}, ValueError, r"`initial_loss_scale` must be >= 1"),
    ({"metrics": ["top5"]}, ValueError, r"unknown metric names \['top5'\]"),
    ({"xla_scope": "all"}, ValueError, r"`xla_scope` must be one of \('step', 'update'\)"),
    ({"xla_scope": "update", "loop_in_program": True}, ValueError, r"needs xla_scope='step'"),
    ({"metrics": {"loss": _LOSS}}, ValueError, r"reserved"),
]


@pytest.mark.parametrize("kwargs,error,message", BAD_STEP_ARGUMENTS)
def test_bad_step_arguments_raise_clear_errors(kwargs, error, message):
  with pytest.raises(error, match=message):
    adam_xla.make_train_step(_model(), _LOSS, adam_xla.Adam(), **kwargs)


def test_other_optimizers_and_scalar_losses_are_refused():
  with pytest.raises(TypeError, match="must be an adam_xla.Adam"):
    adam_xla.make_train_step(_model(), _LOSS, keras.optimizers.Adam())
  step = adam_xla.make_train_step(_model(),
                                  keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                                  adam_xla.Adam())
  x, y = _data()
  with pytest.raises(ValueError, match="per-example values"):
    step((tf.constant(x[:8]), tf.constant(y[:8])))


def test_accumulation_must_divide_the_batch():
  step = adam_xla.make_train_step(_model(), _LOSS, adam_xla.Adam(), accumulation_steps=3)
  x, y = _data()
  with pytest.raises(ValueError, match="does not split into accumulation_steps=3"):
    step((tf.constant(x[:8]), tf.constant(y[:8])))


def test_mirrored_step_needs_an_iterator_and_no_program_loop():
  strategy = MIRRORED[2]
  with strategy.scope():
    model = _model()
  step = adam_xla.make_train_step(model, _LOSS, adam_xla.Adam(), strategy=strategy)
  x, y = _data()
  with pytest.raises(ValueError, match="pass an iterator"):
    step((tf.constant(x[:8]), tf.constant(y[:8])))
  with pytest.raises(ValueError, match="loop_in_program needs the single-program plan"):
    adam_xla.make_train_step(model, _LOSS, adam_xla.Adam(), strategy=strategy, loop_in_program=True)


if __name__ == "__main__":
  pytest_main.main(__file__)
