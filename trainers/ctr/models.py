"""A DLRM-style click-through-rate model (Naumov et al., 2019) as a Keras model.

Dense features go through a bottom MLP whose last layer has the embedding width; each
categorical feature is looked up in its own table; the pairwise dot products of those vectors
(the bottom MLP's output included), concatenated with the bottom MLP's output, go through a
top MLP to one logit per example.

The lookup is a `tf.gather` on the table variable, so the table's gradient is a
`tf.IndexedSlices` of the batch's rows, and stays one until the optimizer: `adam_xla.Adam`
decides (by its `sparse_mode`) whether it acts as a dense gradient or updates only those rows.

The interaction and top MLP are also reachable on their own (`DLRM.interact`), so a TPU step
that gets the embedding activations from the TPU embedding API uses the same model code.
"""

import math
from typing import Sequence

import keras
import tensorflow as tf

from trainers.ctr.criteo_format import NUM_DENSE


class EmbeddingTables(keras.layers.Layer):
  """One table per categorical feature; ids [batch, features] -> list of [batch, dim]."""

  def __init__(self, table_sizes: Sequence[int], embedding_dim: int, **kwargs):
    super().__init__(**kwargs)
    self.table_sizes = tuple(int(s) for s in table_sizes)
    self.embedding_dim = int(embedding_dim)

  def build(self, input_shape):
    del input_shape
    # DLRM's initialization: uniform in +-sqrt(1 / rows), so a row's scale shrinks with the
    # table and the first interactions are small whatever the table size. Each table is its
    # own attribute: TensorFlow checkpoints do not see variables held in a list by a Keras 3
    # layer.
    for i, rows in enumerate(self.table_sizes):
      bound = math.sqrt(1.0 / rows)
      setattr(
          self, f"table_{i}",
          self.add_weight(name=f"table_{i}", shape=(rows, self.embedding_dim),
                          initializer=keras.initializers.RandomUniform(-bound, bound)))

  @property
  def tables(self):
    return [getattr(self, f"table_{i}") for i in range(len(self.table_sizes))]

  def call(self, ids):
    ids = tf.cast(ids, tf.int32)
    return [tf.gather(_as_tf_variable(table), ids[:, i]) for i, table in enumerate(self.tables)]

  def get_config(self):
    return {
        **super().get_config(), "table_sizes": list(self.table_sizes),
        "embedding_dim": self.embedding_dim
    }


def _as_tf_variable(variable):
  """The tf.Variable under a Keras 3 variable: gathering from it gives IndexedSlices grads."""
  return getattr(variable, "value", variable)


def pairwise_interactions(vectors):
  """[batch, n, dim] -> [batch, n (n - 1) / 2]: the dot products of each distinct pair."""
  n = vectors.shape[1]
  products = tf.matmul(vectors, vectors, transpose_b=True)  # [batch, n, n]
  rows, cols = zip(*[(i, j) for i in range(n) for j in range(i)])
  flat = tf.reshape(products, [-1, n * n])
  return tf.gather(flat, [i * n + j for i, j in zip(rows, cols)], axis=1)


def _mlp(widths, name, last_activation):
  layers = [
      keras.layers.Dense(w, activation="relu" if k < len(widths) - 1 or last_activation else None,
                         name=f"{name}_{k}") for k, w in enumerate(widths)
  ]
  return keras.Sequential(layers, name=name)


class DLRM(keras.Model):
  """features {"dense": float [batch, D], "sparse": int [batch, F]} -> logits [batch]."""

  def __init__(self, table_sizes, embedding_dim, bottom_mlp=(64, 32), top_mlp=(128, 64), **kwargs):
    super().__init__(**kwargs)
    self.embedding = EmbeddingTables(table_sizes, embedding_dim, name="embedding")
    # The bottom MLP ends at the embedding width so its output joins the interactions.
    self.bottom = _mlp(tuple(bottom_mlp) + (embedding_dim,), "bottom_mlp", True)
    self.top = _mlp(tuple(top_mlp) + (1,), "top_mlp", False)

  def interact(self, dense, embedded):
    """Logits from dense features and the looked-up vectors (a list of [batch, dim])."""
    bottom = self.bottom(tf.cast(dense, tf.float32))
    stacked = tf.stack([bottom] + list(embedded), axis=1)
    top_input = tf.concat([bottom, pairwise_interactions(stacked)], axis=1)
    return tf.squeeze(self.top(top_input), axis=1)

  def call(self, features, training=False):
    del training
    return self.interact(features["dense"], self.embedding(features["sparse"]))


def build_dlrm(table_sizes, embedding_dim, bottom_mlp=(64, 32), top_mlp=(128, 64),
               num_dense=NUM_DENSE):
  """A built DLRM (its variables exist), for `num_dense` dense and len(table_sizes) ids."""
  model = DLRM(table_sizes, embedding_dim, bottom_mlp, top_mlp, name="dlrm")
  model({"dense": tf.zeros([1, num_dense]), "sparse": tf.zeros([1, len(table_sizes)], tf.int64)})
  return model


def sigmoid_cross_entropy(labels, logits):
  """Per-example binary cross-entropy from logits (the CTR loss)."""
  labels = tf.reshape(tf.cast(labels, tf.float32), [-1])
  logits = tf.reshape(tf.cast(logits, tf.float32), [-1])
  return tf.nn.sigmoid_cross_entropy_with_logits(labels=labels, logits=logits)
