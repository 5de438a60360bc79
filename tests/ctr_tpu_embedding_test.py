"""Tests of trainers/ctr/tpu_embedding.py: the table and Adam mappings, refusals, and the step.

On CPU: the mappings and the step's refusals. The TPU Adam's arithmetic is not available on
CPU, so `test_matches_adam_xla` checks our settings against the formula the TPU configuration
proto documents (no bias correction, epsilon after the sqrt, lazy or not). The step itself
runs only on a TPU: `test_step_on_a_tpu` is skipped elsewhere, with the reason.
"""

import math

import keras
import numpy as np
import pytest
import tensorflow as tf
from tensorflow.core.protobuf.tpu import optimization_parameters_pb2
from tensorflow.core.protobuf.tpu import tpu_embedding_configuration_pb2
from tensorflow.python.trackable import base as trackable_base

import adam_xla
from tests import pytest_main
from trainers.ctr import models
from trainers.ctr import tpu_embedding

SIZES = (3, 50, 1000)
ADAM = dict(beta_1=0.8, beta_2=0.95, epsilon=0.1)


def _optimizer(sparse_mode="lazy", learning_rate=0.01, **kwargs):
  return tpu_embedding.tpu_optimizer(learning_rate,
                                     **{**ADAM, "sparse_mode": sparse_mode, **kwargs})


# ---- Tables ---------------------------------------------------------------------------------


def test_feature_config_one_table_per_feature():
  features = tpu_embedding.feature_config(SIZES, 8)
  assert len(features) == 3
  assert all(isinstance(f, tf.tpu.experimental.embedding.FeatureConfig) for f in features)
  assert [f.table.vocabulary_size for f in features] == list(SIZES)
  assert [f.table.dim for f in features] == [8, 8, 8]
  assert [f.table.name for f in features] == ["table_0", "table_1", "table_2"]
  assert [f.name for f in features] == ["feature_0", "feature_1", "feature_2"]
  assert len({id(f.table) for f in features}) == 3  # no shared tables
  assert all(f.table.combiner == "sum" and f.max_sequence_length == 0 for f in features)
  assert all(f.table.optimizer is None for f in features)  # the TPUEmbedding's optimizer


@pytest.mark.parametrize("rows", [4, 1000])
def test_initializer_is_dlrm_uniform(rows):
  initializer = tpu_embedding.feature_config((rows,), 16)[0].table.initializer
  values = initializer((2000, 16), dtype=tf.float32).numpy()  # the limit follows `rows`
  limit = math.sqrt(1.0 / rows)
  assert values.shape == (2000, 16) and values.dtype == np.float32
  assert np.all(np.abs(values) <= limit)
  assert values.max() > 0.9 * limit and values.min() < -0.9 * limit
  np.testing.assert_allclose(values.std(), limit / math.sqrt(3), rtol=0.05)
  assert abs(values.mean()) < 0.05 * limit


def test_initializer_seed():
  first = tpu_embedding.feature_config((100, 100), 4, initializer_seed=7)
  again = tpu_embedding.feature_config((100, 100), 4, initializer_seed=7)
  draw = lambda features, i: features[i].table.initializer((100, 4)).numpy()
  np.testing.assert_array_equal(draw(first, 0), draw(again, 0))
  assert not np.array_equal(draw(first, 0), draw(first, 1))  # one seed per table
  unseeded = tpu_embedding.feature_config((100,), 4)
  assert not np.array_equal(draw(unseeded, 0), draw(unseeded, 0))


def test_initializer_shards_differ():
  # On TPU the API initializes one shard per host, passing the table's shape and a ShardInfo
  # with the shard's shape and row offset (tpu_embedding_v2.make_sharded_variable_creator).
  initializer = tpu_embedding.DLRMUniform(rows=10, seed=3)
  shard = lambda offset: initializer((10, 2), dtype=tf.float32, shard_info=trackable_base.ShardInfo(
      (5, 2), (offset, 0)))
  a, b = shard(0).numpy(), shard(5).numpy()
  assert a.shape == (5, 2)
  assert not np.array_equal(a, b)
  np.testing.assert_array_equal(a, shard(0).numpy())
  assert np.all(np.abs(np.concatenate([a, b])) <= math.sqrt(0.1))


def test_tables_created_by_the_api_on_cpu():
  # Without a TPUStrategy the API builds its tables as ordinary variables, through the same
  # initializer call it makes on TPU hosts.
  embedding = tf.tpu.experimental.embedding.TPUEmbedding(
      tpu_embedding.feature_config(SIZES, 4, initializer_seed=1), _optimizer())
  embedding.build()
  tables = {config.name: table for config, table in embedding.embedding_tables.items()}
  assert sorted(tables) == ["table_0", "table_1", "table_2"]
  for i, rows in enumerate(SIZES):
    values = tables[f"table_{i}"].numpy()
    assert values.shape == (rows, 4)
    assert np.all(np.abs(values) <= math.sqrt(1.0 / rows))
    assert values.max() > 0.5 * math.sqrt(1.0 / rows)


@pytest.mark.parametrize("kwargs, message", [
    (dict(table_sizes=(), embedding_dim=4), "table_sizes"),
    (dict(table_sizes=(3, 0), embedding_dim=4), "table_sizes"),
    (dict(table_sizes=(3, 2.5), embedding_dim=4), "table_sizes"),
    (dict(table_sizes=(3,), embedding_dim=0), "embedding_dim"),
])
def test_feature_config_refusals(kwargs, message):
  with pytest.raises(ValueError, match=message):
    tpu_embedding.feature_config(**kwargs)


# ---- The tables' Adam -----------------------------------------------------------------------


@pytest.mark.parametrize("sparse_mode, lazy", [("dense", False), ("lazy", True)])
def test_adam_settings(sparse_mode, lazy):
  opt = _optimizer(sparse_mode, learning_rate=0.03)
  assert isinstance(opt, tf.tpu.experimental.embedding.Adam)
  assert opt.lazy_adam is lazy
  assert opt.sum_inside_sqrt is False
  assert opt.use_gradient_accumulation is True
  assert (opt.beta_1, opt.beta_2, opt.epsilon) == (0.8, 0.95, 0.1)
  assert opt.learning_rate == 0.03
  assert (opt.clip_gradient_min, opt.clip_gradient_max) == (None, None)
  assert (opt.clip_weight_min, opt.clip_weight_max) == (None, None)
  assert not opt.weight_decay_factor


@pytest.mark.parametrize("sparse_mode", ["dense", "lazy"])
def test_configuration_sent_to_the_tpu(sparse_mode):
  # The proto the TPU embedding engine is configured with (a private method of TF 2.21).
  proto = optimization_parameters_pb2.OptimizationParameters()
  _optimizer(sparse_mode, clipvalue=0.5)._set_optimization_parameters(proto)
  assert proto.WhichOneof("parameters") == "adam"
  assert proto.adam.use_non_lazy_adam is (sparse_mode == "dense")
  assert proto.adam.use_sum_inside_sqrt is False
  np.testing.assert_allclose([proto.adam.beta1, proto.adam.beta2, proto.adam.epsilon],
                             [0.8, 0.95, 0.1], rtol=1e-7)
  assert proto.gradient_accumulation_status == (
      optimization_parameters_pb2.GradientAccumulationStatus.ENABLED)
  assert proto.gradient_clipping_limits.lower.value == -0.5
  assert proto.gradient_clipping_limits.upper.value == 0.5
  assert not proto.HasField("clipping_limits")
  assert proto.weight_decay_factor == 0


def test_table_descriptor_sent_to_the_tpu():
  # What TPUEmbedding.build writes for each table on a TPU (private methods of TF 2.21). With
  # protobuf 7 this fails for the API's default low_dimensional_packing_status=False.
  iterations = tf.Variable(0, dtype=tf.int64)
  optimizer = _optimizer("dense", iterations=iterations)
  configuration = tpu_embedding_configuration_pb2.TPUEmbeddingConfiguration()
  for feature in tpu_embedding.feature_config(SIZES, 8):
    feature.table.optimizer = optimizer  # as TPUEmbedding does for tables without their own
    feature.table._set_table_descriptor(configuration.table_descriptor.add(), 2,
                                        {optimizer.learning_rate: 0})
  tables = configuration.table_descriptor
  assert [t.name for t in tables] == ["table_0", "table_1", "table_2"]
  assert [t.vocabulary_size for t in tables] == [3, 50, 1000]
  assert [t.dimension for t in tables] == [8, 8, 8]
  parameters = tables[2].optimization_parameters
  assert parameters.learning_rate.WhichOneof("learning_rate") == "dynamic"
  assert parameters.adam.use_non_lazy_adam and not parameters.adam.use_sum_inside_sqrt
  assert parameters.low_dimensional_packing_status == 0


def test_api_default_packing_status_fails_with_this_protobuf():
  # Documents why tpu_optimizer passes low_dimensional_packing_status=0. If this starts to
  # pass, TF or protobuf changed and the workaround can go.
  proto = optimization_parameters_pb2.OptimizationParameters()
  with pytest.raises(TypeError, match="Expected an int, got a boolean"):
    tf.tpu.experimental.embedding.Adam(0.1)._set_optimization_parameters(proto)


def test_callable_learning_rate_passes_through():
  rate = lambda: 0.123
  assert _optimizer(learning_rate=rate).learning_rate is rate
  variable = tf.Variable(0.5)
  from_variable = _optimizer(learning_rate=variable).learning_rate
  variable.assign(0.25)
  assert float(from_variable()) == 0.25


def test_bias_corrected_learning_rate():
  iterations = tf.Variable(0, dtype=tf.int64)
  rate = _optimizer(learning_rate=0.01, iterations=iterations).learning_rate
  assert callable(rate)
  np.testing.assert_allclose(float(rate()), 0.01 * math.sqrt(1 - 0.95) / (1 - 0.8), rtol=1e-6)
  iterations.assign(9)  # t = 10
  np.testing.assert_allclose(float(rate()), 0.01 * math.sqrt(1 - 0.95**10) / (1 - 0.8**10),
                             rtol=1e-6)


def test_schedule_is_called_with_the_step():
  schedule = tf.keras.optimizers.schedules.PiecewiseConstantDecay([4], [0.1, 0.01])
  iterations = tf.Variable(5, dtype=tf.int64)
  rate = _optimizer(learning_rate=schedule, iterations=iterations).learning_rate
  np.testing.assert_allclose(float(rate()), 0.01 * math.sqrt(1 - 0.95**6) / (1 - 0.8**6), rtol=1e-6)


def test_weight_decay():
  opt = _optimizer(learning_rate=0.01, weight_decay=0.5, iterations=tf.Variable(0, tf.int64))
  assert opt.weight_decay_factor == pytest.approx(0.005)  # lr * weight_decay, lr not corrected
  assert not opt.multiply_weight_decay_factor_by_learning_rate
  opt = _optimizer(learning_rate=lambda: 0.01, weight_decay=0.5)
  assert opt.weight_decay_factor == 0.5
  assert opt.multiply_weight_decay_factor_by_learning_rate
  with pytest.raises(ValueError, match="`weight_decay` must be 0 when the learning rate"):
    _optimizer(learning_rate=lambda: 0.01, weight_decay=0.5, iterations=tf.Variable(0, tf.int64))


@pytest.mark.parametrize("kwargs, message", [
    (dict(sparse_mode="rows"), r"`sparse_mode` must be one of \('dense', 'lazy'\)"),
    (dict(amsgrad=True), "`amsgrad` must be False"),
    (dict(clipnorm=1.0), "`clipnorm` must be None"),
    (dict(global_clipnorm=1.0), "`global_clipnorm` must be None"),
    (dict(epsilon=0.0), "`epsilon` must be a float > 0"),
    (dict(beta_1=lambda: 0.9), r"`beta_1` must be a float in \[0, 1\)"),
    (dict(beta_2=1.0), r"`beta_2` must be a float in \[0, 1\)"),
    (dict(clipvalue=0.0), "`clipvalue` must be None or a float > 0"),
    (dict(weight_decay=-1.0), "`weight_decay` must be a float >= 0"),
    (dict(learning_rate=-0.1), "`learning_rate` must be a float >= 0"),
    (dict(learning_rate="fast"), "`learning_rate` must be a float"),
    (dict(learning_rate=tf.keras.optimizers.schedules.ExponentialDecay(0.1, 10, 0.5)),
     "LearningRateSchedule `learning_rate` needs `iterations`"),
    (dict(iterations=3), "`iterations` must be None or the int step variable"),
])
def test_refusals(kwargs, message):
  with pytest.raises(ValueError, match=message):
    _optimizer(**kwargs)


@pytest.mark.parametrize("sparse_mode", ["dense", "lazy"])
def test_matches_adam_xla(sparse_mode):
  """adam_xla on a table vs. the TPU Adam's documented formula with our settings."""
  rows, dim = 6, 3
  rng = np.random.default_rng(0)
  initial = rng.uniform(-1, 1, (rows, dim)).astype(np.float32)
  reference_adam = adam_xla.Adam(0.05, sparse_mode=sparse_mode, **ADAM)
  table = tf.Variable(initial)
  tpu_adam = tpu_embedding.tpu_optimizer_like(reference_adam)
  expected = initial.astype(np.float64)
  m, v = np.zeros_like(expected), np.zeros_like(expected)
  for ids in ([0, 2, 2], [1, 2, 5], [0, 0, 0], [3, 4, 1]):  # rows repeat within a batch
    before_step = table.numpy()
    grads = rng.normal(size=(len(ids), dim)).astype(np.float32)
    # TPU side: the rate it is sent (read before adam_xla's step), gradients accumulated per
    # row, one update of the looked-up rows (lazy) or of every row (non-lazy).
    rate = float(tpu_adam.learning_rate())
    accumulated = np.zeros_like(expected)
    np.add.at(accumulated, ids, grads)
    updated = np.unique(ids) if tpu_adam.lazy_adam else np.arange(rows)
    b1, b2, eps = tpu_adam.beta_1, tpu_adam.beta_2, tpu_adam.epsilon
    assert not tpu_adam.sum_inside_sqrt
    m[updated] = b1 * m[updated] + (1 - b1) * accumulated[updated]
    v[updated] = b2 * v[updated] + (1 - b2) * accumulated[updated]**2
    expected[updated] -= rate * m[updated] / (np.sqrt(v[updated]) + eps)
    reference_adam.apply_gradients([(tf.IndexedSlices(tf.constant(grads), tf.constant(ids),
                                                      tf.constant([rows, dim])), table)])
  assert int(reference_adam.iterations) == 4
  np.testing.assert_allclose(table.numpy(), expected, rtol=2e-5, atol=2e-6)
  moved_in_last_step = np.any(table.numpy() != before_step, axis=1)
  expected_moved = [True] * 6 if sparse_mode == "dense" else [False, True, False, True, True, False]
  np.testing.assert_array_equal(moved_in_last_step, expected_moved)


def test_tpu_optimizer_like_follows_a_schedule():
  schedule = keras.optimizers.schedules.ExponentialDecay(0.1, decay_steps=1, decay_rate=0.5)
  adam = adam_xla.Adam(schedule, **ADAM)
  opt = tpu_embedding.tpu_optimizer_like(adam)
  for step in (0, 3):
    adam.iterations.assign(step)
    t = step + 1
    np.testing.assert_allclose(float(opt.learning_rate()),
                               0.1 * 0.5**step * math.sqrt(1 - 0.95**t) / (1 - 0.8**t), rtol=1e-6)


def test_tpu_optimizer_like():
  adam = adam_xla.Adam(0.02, sparse_mode="dense", clipvalue=2.0, **ADAM)
  opt = tpu_embedding.tpu_optimizer_like(adam)
  assert opt.lazy_adam is False and opt.sum_inside_sqrt is False
  assert (opt.clip_gradient_min, opt.clip_gradient_max) == (-2.0, 2.0)
  adam.iterations.assign(2)
  np.testing.assert_allclose(float(opt.learning_rate()),
                             0.02 * math.sqrt(1 - 0.95**3) / (1 - 0.8**3), rtol=1e-6)
  with pytest.raises(ValueError, match="`amsgrad` must be False"):
    tpu_embedding.tpu_optimizer_like(adam_xla.Adam(amsgrad=True))
  with pytest.raises(ValueError, match="`global_clipnorm` must be None"):
    tpu_embedding.tpu_optimizer_like(adam_xla.Adam(global_clipnorm=1.0))


# ---- The step's refusals --------------------------------------------------------------------


def _unbuilt_dlrm():
  return models.DLRM((5, 7), 4, bottom_mlp=(8,), top_mlp=(8,))


def test_step_needs_a_tpu_strategy():
  with pytest.raises(ValueError, match="TPUEmbeddingStep needs a tf.distribute.TPUStrategy"):
    tpu_embedding.TPUEmbeddingStep(_unbuilt_dlrm(), adam_xla.Adam(), global_batch_size=8)
  strategy = tf.distribute.OneDeviceStrategy("/cpu:0")
  with strategy.scope():
    with pytest.raises(ValueError, match="got OneDeviceStrategy"):
      tpu_embedding.TPUEmbeddingStep(_unbuilt_dlrm(), adam_xla.Adam(), global_batch_size=8)


def test_step_refuses_wrong_parts():
  with pytest.raises(TypeError, match="`optimizer` must be an adam_xla.Adam"):
    tpu_embedding.TPUEmbeddingStep(_unbuilt_dlrm(), tf.keras.optimizers.Adam(), global_batch_size=8)
  with pytest.raises(TypeError, match="`model` must be a trainers.ctr.models.DLRM"):
    tpu_embedding.TPUEmbeddingStep(tf.keras.Sequential(), adam_xla.Adam(), global_batch_size=8)
  built = models.build_dlrm((5, 7), 4, bottom_mlp=(8,), top_mlp=(8,))
  with pytest.raises(ValueError, match="own embedding tables are built"):
    tpu_embedding.TPUEmbeddingStep(built, adam_xla.Adam(), global_batch_size=8)


# ---- The step on a TPU ----------------------------------------------------------------------

# TPUEmbedding keeps its tables in TPU memory and has no CPU implementation of enqueue, dequeue
# or its Adam, so a CPU host has nothing real to run: these tests skip there and run on a Cloud
# TPU VM with tensorflow-tpu. Detected from the local devices, so CPU hosts never try to reach
# a TPU service.
requires_tpu = pytest.mark.skipif(
    not tf.config.list_physical_devices("TPU"),
    reason="needs a TPU (a Cloud TPU VM with tensorflow-tpu): TPUEmbedding's enqueue, dequeue "
    "and table update run only on TPU hardware")


@pytest.fixture(scope="module")
def tpu_strategy():
  """The TPUStrategy of the local TPU VM, initialized once, as strategies.create_strategy."""
  resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu="local")
  tf.tpu.experimental.initialize_tpu_system(resolver)
  return tf.distribute.TPUStrategy(resolver)


@pytest.fixture
def full_float32_matmuls():
  """TPUs multiply float32 in bfloat16 passes by default; the checks below want float32."""
  previous = tf.config.experimental.tensor_float_32_execution_enabled()
  tf.config.experimental.enable_tensor_float_32_execution(False)
  yield
  tf.config.experimental.enable_tensor_float_32_execution(previous)


def _cpu_tables(checkpoint_path, sizes, dim, sparse_mode):
  """The tables of a TPU run's checkpoint, read as TPUEmbedding documents it: restored into a
  TPUEmbedding built without a TPU strategy, whose tables are ordinary variables."""
  embedding = tf.tpu.experimental.embedding.TPUEmbedding(tpu_embedding.feature_config(sizes, dim),
                                                         _optimizer(sparse_mode))
  embedding.build()
  tf.train.Checkpoint(embedding=embedding).read(checkpoint_path).assert_existing_objects_matched()
  tables = {config.name: table.numpy() for config, table in embedding.embedding_tables.items()}
  return [tables[f"table_{i}"] for i in range(len(sizes))]


@requires_tpu
@pytest.mark.usefixtures("full_float32_matmuls")
def test_step_on_a_tpu(tpu_strategy, tmp_path):
  """One step against the same step computed on the host: the loss, the MLPs updated by
  adam_xla, and the looked-up table rows moved by the TPU Adam with adam_xla's bias-corrected
  rate at t = 1 (read before adam_xla counts the step)."""
  sizes, dim = (5, 7), 4
  batch = 2 * tpu_strategy.num_replicas_in_sync
  with tpu_strategy.scope():
    model = models.DLRM(sizes, dim, bottom_mlp=(8,), top_mlp=(8,))
    adam = adam_xla.Adam(0.01, sparse_mode="lazy", **ADAM)
    step = tpu_embedding.TPUEmbeddingStep(model, adam, global_batch_size=batch, num_dense=3,
                                          initializer_seed=0)
  assert not model.embedding.built  # no table besides the embedding API's
  rng = np.random.default_rng(1)
  ids = np.stack([rng.integers(0, n, batch) for n in sizes], axis=1)
  dense = rng.normal(size=(batch, 3)).astype(np.float32)
  labels = rng.integers(0, 2, batch).astype(np.float32)
  iterator = iter(
      step.distribute(
          tf.data.Dataset.from_tensor_slices(
              ({"dense": dense, "sparse": ids}, labels)).batch(batch, drop_remainder=True)))

  # The host's step, from the initial tables (on one host each table is one shard at row
  # offset 0: the initializer's own draw) and a copy of the MLPs.
  initial = [
      tpu_embedding.DLRMUniform(rows, seed=i)((rows, dim)).numpy() for i, rows in enumerate(sizes)
  ]
  with tf.device("/cpu:0"):
    host_model = models.DLRM(sizes, dim, bottom_mlp=(8,), top_mlp=(8,))
    host_model.interact(tf.zeros([1, 3]), [tf.zeros([1, dim])] * len(sizes))
    host_model.set_weights(model.get_weights())
    activations = [tf.gather(t, ids[:, i]) for i, t in enumerate(initial)]
    with tf.GradientTape() as tape:
      tape.watch(activations)
      expected_loss = tf.reduce_mean(
          models.sigmoid_cross_entropy(labels, host_model.interact(dense, activations)))
    activation_grads, mlp_grads = tape.gradient(expected_loss,
                                                (activations, host_model.trainable_variables))
    adam_xla.Adam(0.01, sparse_mode="lazy",
                  **ADAM).apply_gradients(zip(mlp_grads, host_model.trainable_variables))

  loss = step(iterator)["loss"]
  np.testing.assert_allclose(float(loss), float(expected_loss), rtol=1e-4)
  assert int(adam.iterations) == 1
  for variable, expected in zip(model.trainable_variables, host_model.trainable_variables):
    np.testing.assert_allclose(variable.numpy(), expected.numpy(), rtol=1e-4, atol=1e-6)

  path = tf.train.Checkpoint(embedding=step.embedding).write(str(tmp_path / "tables"))
  rate = 0.01 * math.sqrt(1 - ADAM["beta_2"]) / (1 - ADAM["beta_1"])  # t = 1
  for i, (table, before) in enumerate(zip(_cpu_tables(path, sizes, dim, "lazy"), initial)):
    summed = np.zeros(before.shape)  # gradients of a row's repeats, summed (accumulation)
    np.add.at(summed, ids[:, i], activation_grads[i].numpy())
    m, v = (1 - ADAM["beta_1"]) * summed, (1 - ADAM["beta_2"]) * summed**2
    expected_change = -rate * m / (np.sqrt(v) + ADAM["epsilon"])
    expected_change[~np.isin(np.arange(len(before)), ids[:, i])] = 0.0  # lazy: not looked up
    np.testing.assert_allclose(table - before, expected_change, rtol=1e-3, atol=1e-7)


if __name__ == "__main__":
  pytest_main.main(__file__)
