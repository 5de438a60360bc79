"""Tests of the DLRM model (trainers/ctr/models.py): shapes, the interaction, sparse gradients
that stay IndexedSlices into the optimizer, and dense and lazy training equal to a float64
NumPy Adam on a small table."""

import numpy as np
import pytest
import tensorflow as tf

import adam_xla
from adam_xla import gradients
from tests import numpy_adam
from tests import pytest_main
from trainers.ctr import models

TABLES = (7, 5, 9)
DIM = 4
NUM_DENSE = 3


def _model(seed=0):
  tf.keras.utils.set_random_seed(seed)
  return models.build_dlrm(TABLES, DIM, bottom_mlp=(6,), top_mlp=(5,), num_dense=NUM_DENSE)


def _batches(count=3, size=6, seed=1):
  rng = np.random.default_rng(seed)
  batches = []
  for k in range(count):
    ids = np.stack([rng.integers(0, rows, size) for rows in TABLES], axis=1)
    ids[1, 0] = ids[0, 0]  # a repeated id in the batch: its gradients must add up
    if k == count - 1:
      ids[:, 2] %= 3  # the last batch leaves rows 3.. of table 2 out
    batches.append(({
        "dense": tf.constant(rng.normal(size=(size, NUM_DENSE)), tf.float32),
        "sparse": tf.constant(ids, tf.int64)
    }, tf.constant(rng.integers(0, 2, size), tf.float32)))
  return batches


def test_logits_have_one_value_per_example_and_tables_their_sizes():
  model = _model()
  features, _ = _batches(1)[0]
  assert model(features).shape == (6,)
  tables = model.embedding.tables
  assert [tuple(t.shape) for t in tables] == [(rows, DIM) for rows in TABLES]
  for table, rows in zip(tables, TABLES):  # DLRM's +-sqrt(1/rows) initialization
    assert np.abs(table.numpy()).max() <= np.sqrt(1.0 / rows)
    assert np.abs(table.numpy()).max() > 0.2 * np.sqrt(1.0 / rows)


def test_pairwise_interactions_are_the_distinct_dot_products():
  vectors = np.random.default_rng(0).normal(size=(2, 4, 3)).astype(np.float32)
  got = models.pairwise_interactions(tf.constant(vectors)).numpy()
  expected = [[vectors[b, i] @ vectors[b, j] for i in range(4) for j in range(i)] for b in range(2)]
  np.testing.assert_allclose(got, expected, rtol=1e-6)


def test_sigmoid_cross_entropy_matches_the_formula():
  logits, labels = np.array([-2.0, 0.0, 3.0]), np.array([1.0, 0.0, 1.0])
  p = 1 / (1 + np.exp(-logits))
  expected = -(labels * np.log(p) + (1 - labels) * np.log(1 - p))
  np.testing.assert_allclose(
      models.sigmoid_cross_entropy(labels, logits).numpy(), expected, rtol=1e-6)


def test_table_gradients_are_indexed_slices_of_the_batch_rows():
  model = _model()
  features, labels = _batches(1)[0]
  with tf.GradientTape() as tape:
    loss = tf.reduce_mean(models.sigmoid_cross_entropy(labels, model(features)))
  grads = tape.gradient(loss, model.embedding.tables)
  for i, grad in enumerate(grads):
    assert isinstance(grad, tf.IndexedSlices)
    np.testing.assert_array_equal(grad.indices.numpy(), features["sparse"].numpy()[:, i])


def test_sparse_gradients_reach_the_optimizer_as_indexed_slices(monkeypatch):
  seen = []
  original = gradients.canonical

  def spy(grad, var, sparse_mode):
    seen.append((var.name.split("/")[-1].split(":")[0], type(grad).__name__))
    return original(grad, var, sparse_mode)

  monkeypatch.setattr(gradients, "canonical", spy)
  model = _model()
  step = adam_xla.make_train_step(model, models.sigmoid_cross_entropy,
                                  adam_xla.Adam(0.01, sparse_mode="lazy"))
  step(_batches(1)[0])
  kinds = dict(seen)
  assert all(kinds[f"table_{i}"] == "IndexedSlices" for i in range(len(TABLES)))
  assert kinds["kernel"] != "IndexedSlices"


def _reference_training(initial, batches, lazy, learning_rate):
  """Float64 NumPy Adam on the gradients of a float32 copy of the model."""
  model = _model()
  params = [np.array(w, np.float64) for w in initial]
  reference = numpy_adam.NumpyAdam(learning_rate=learning_rate, lazy=lazy)
  num_tables = len(TABLES)
  for features, labels in batches:
    model.set_weights([p.astype(np.float32) for p in params])
    with tf.GradientTape() as tape:
      loss = tf.reduce_mean(models.sigmoid_cross_entropy(labels, model(features)))
    grads = tape.gradient(loss, model.trainable_variables)
    dense = [tf.convert_to_tensor(g).numpy() for g in grads]
    touched = [features["sparse"].numpy()[:, i] for i in range(num_tables)]
    touched += [None] * (len(grads) - num_tables)
    reference.step(params, dense, touched_rows=touched)
  return params


@pytest.mark.parametrize("sparse_mode", ["dense", "lazy"])
def test_training_equals_the_numpy_reference(sparse_mode):
  model = _model()
  assert [v.name for v in model.trainable_variables[:len(TABLES)]
         ] == [f"table_{i}" for i in range(len(TABLES))]  # the reference's order
  initial = [v.numpy() for v in model.trainable_variables]
  batches = _batches()
  optimizer = adam_xla.Adam(0.05, sparse_mode=sparse_mode)
  step = adam_xla.make_train_step(model, models.sigmoid_cross_entropy, optimizer)
  for batch in batches[:-1]:
    step(batch)
  table = model.trainable_variables[2]
  before_last = table.numpy()
  has_momentum = np.abs(optimizer.slot(table, "m").numpy()).max(axis=1) > 0
  step(batches[-1])
  expected = _reference_training(initial, batches, sparse_mode == "lazy", 0.05)
  for variable, want in zip(model.trainable_variables, expected):
    np.testing.assert_allclose(variable.numpy(), want, rtol=2e-5, atol=2e-6, err_msg=variable.name)
  # The modes differ on rows with momentum that are absent from the last batch: dense mode
  # moves them, lazy mode leaves them alone.
  absent = np.setdiff1d(np.flatnonzero(has_momentum), batches[-1][0]["sparse"].numpy()[:, 2])
  assert absent.size  # the test data has such rows
  moved = np.abs(table.numpy()[absent] - before_last[absent]).max(axis=1)
  assert (moved.max() == 0) if sparse_mode == "lazy" else (moved.min() > 1e-4)


if __name__ == "__main__":
  pytest_main.main(__file__)
