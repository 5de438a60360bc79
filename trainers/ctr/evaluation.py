"""Evaluation of a CTR model over a whole held-out split: exact AUC and log loss."""

import numpy as np
import tensorflow as tf

from trainers.ctr import metrics


def make_ctr_evaluator(model, strategy, distributed_dataset_fn):
  """Returns evaluate() -> {"auc", "log_loss", "click_rate"} over one pass of the data.

  `distributed_dataset_fn()` returns a fresh distributed dataset of (features, labels)
  batches. Every replica's probabilities and labels are brought to the host, where the exact
  metrics of `metrics` are computed: evaluation splits of a CTR trainer fit in memory.
  """

  def replica_predictions(batch):
    features, labels = batch
    probabilities = tf.sigmoid(tf.cast(model(features, training=False), tf.float32))
    return tf.reshape(probabilities, [-1]), tf.reshape(tf.cast(labels, tf.float32), [-1])

  @tf.function
  def batch_predictions(batch):
    return strategy.run(replica_predictions, args=(batch,))

  def evaluate():
    probabilities, labels = [], []
    for batch in distributed_dataset_fn():
      replica_probabilities, replica_labels = batch_predictions(batch)
      probabilities += [p.numpy() for p in strategy.experimental_local_results(
          replica_probabilities)]
      labels += [l.numpy() for l in strategy.experimental_local_results(replica_labels)]
    if not labels:
      raise ValueError("evaluation found no complete batch in the evaluation split; use a "
                       "smaller --global_batch_size or more evaluation data.")
    labels, probabilities = np.concatenate(labels), np.concatenate(probabilities)
    return {"auc": metrics.auc(labels, probabilities),
            "log_loss": metrics.log_loss(labels, probabilities),
            "click_rate": float(np.mean(labels))}

  return evaluate
