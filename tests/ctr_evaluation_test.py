"""Tests of the CTR evaluator (trainers/ctr/evaluation.py): over a whole split, its AUC and log
loss equal the exact metrics of the model's probabilities."""

import numpy as np
import pytest
import tensorflow as tf

from tests import pytest_main
from trainers.ctr import evaluation
from trainers.ctr import metrics


def _first_feature_as_logit(features, training=False):
  del training
  return features["dense"][:, 0]


def _dataset(logits, labels, batch_size):
  features = {"dense": logits[:, None].astype(np.float32)}
  return tf.data.Dataset.from_tensor_slices(
      (features, labels.astype(np.float32))).batch(batch_size, drop_remainder=True)


def test_metrics_cover_every_batch_and_equal_the_exact_values():
  rng = np.random.default_rng(0)
  logits = rng.normal(size=96)
  labels = (rng.random(96) < 1 / (1 + np.exp(-2 * logits))).astype(np.float64)
  strategy = tf.distribute.get_strategy()
  evaluate = evaluation.make_ctr_evaluator(
      evaluation.model_predictions(_first_feature_as_logit, strategy), strategy,
      lambda: _dataset(logits, labels, 32))
  got = evaluate()
  probabilities = 1 / (1 + np.exp(-logits.astype(np.float32).astype(np.float64)))
  assert got["auc"] == pytest.approx(metrics.auc(labels, probabilities), abs=1e-12)
  assert got["log_loss"] == pytest.approx(metrics.log_loss(labels, probabilities), rel=1e-5)
  assert got["click_rate"] == pytest.approx(labels.mean())
  assert evaluate() == got  # every evaluation sees the same examples


def test_a_split_smaller_than_one_batch_is_an_error():
  strategy = tf.distribute.get_strategy()
  evaluate = evaluation.make_ctr_evaluator(
      evaluation.model_predictions(_first_feature_as_logit, strategy), strategy,
      lambda: _dataset(np.zeros(10), np.ones(10), 32))
  with pytest.raises(ValueError, match="no complete batch"):
    evaluate()


if __name__ == "__main__":
  pytest_main.main(__file__)
