"""Evaluation of a CTR model over a whole held-out split: exact AUC and log loss."""

import numpy as np
import tensorflow as tf

from trainers.common import strategies
from trainers.ctr import metrics


def model_predictions(model, strategy):
  """predict(batch) -> per-replica (probabilities, labels) of a Keras-style `model`."""

  def replica_predictions(batch):
    features, labels = batch
    probabilities = tf.sigmoid(tf.cast(model(features, training=False), tf.float32))
    return tf.reshape(probabilities, [-1]), tf.reshape(tf.cast(labels, tf.float32), [-1])

  return strategies.on_replicas(strategy, replica_predictions)


def make_ctr_evaluator(predict, strategy, distributed_dataset_fn):
  """Returns evaluate() -> {"auc", "log_loss", "click_rate"} over one pass of the data.

  `distributed_dataset_fn()` returns a fresh distributed dataset; `predict(batch)` maps one
  of its batches to per-replica (probabilities, labels), e.g. `model_predictions(model,
  strategy)`. Every replica's values are brought to the host, where the exact metrics of
  `metrics` are computed: evaluation splits of a CTR trainer fit in memory.
  """

  def evaluate():
    probabilities, labels = [], []
    for batch in distributed_dataset_fn():
      batch_probabilities, batch_labels = strategies.local_values(strategy, predict(batch))
      probabilities.append(batch_probabilities)
      labels.append(batch_labels)
    if not labels:
      raise ValueError("evaluation found no complete batch in the evaluation split; use a "
                       "smaller --global_batch_size or more evaluation data.")
    labels, probabilities = np.concatenate(labels), np.concatenate(probabilities)
    return {
        "auc": metrics.auc(labels, probabilities),
        "log_loss": metrics.log_loss(labels, probabilities), "click_rate": float(np.mean(labels))
    }

  return evaluate
