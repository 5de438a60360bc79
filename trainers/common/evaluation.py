"""Evaluation of a classifier over a whole validation split, under any strategy."""

import tensorflow as tf

from trainers.common import strategies


def make_classification_evaluator(model, strategy, distributed_dataset_fn, top_k=(1, 5)):
  """Returns evaluate() -> {"top1": ..., "top5": ...}: accuracies over one pass of the data.

  `distributed_dataset_fn()` returns a fresh distributed dataset of (images, labels) batches;
  it is called once per evaluation so that every evaluation sees the same examples.
  """

  def replica_counts(batch):
    images, labels = batch
    logits = tf.cast(model(images, training=False), tf.float32)
    labels = tf.reshape(tf.cast(labels, tf.int32), [-1])
    counts = {
        f"top{k}": tf.reduce_sum(
            tf.cast(tf.math.in_top_k(labels, logits, k=min(k, logits.shape[-1])),
                    tf.float32)) for k in top_k
    }
    counts["examples"] = tf.cast(tf.size(labels), tf.float32)
    return counts

  batch_counts = strategies.on_replicas(strategy, replica_counts, summed=True)

  def evaluate():
    totals = None
    for batch in distributed_dataset_fn():
      counts = batch_counts(batch)
      totals = counts if totals is None else {k: totals[k] + counts[k] for k in totals}
    if totals is None or float(totals["examples"]) == 0:
      raise ValueError("evaluation found no complete batch in the validation split; use a "
                       "smaller --global_batch_size or more validation data.")
    examples = float(totals.pop("examples"))
    return {name: float(count) / examples for name, count in totals.items()}

  return evaluate
