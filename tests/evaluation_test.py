"""Tests of trainers/common/evaluation.py on a model with known predictions."""

import numpy as np
import tensorflow as tf

from tests import pytest_main
from trainers.common import evaluation


class _FixedLogits(tf.Module):
  """Returns the logits stored in the first feature column's index into a table."""

  def __init__(self, table):
    super().__init__()
    self.table = tf.constant(table, tf.float32)

  def __call__(self, images, training=False):
    del training
    return tf.gather(self.table, tf.cast(images[:, 0], tf.int32))


def test_top1_and_top5_match_a_numpy_count():
  rng = np.random.default_rng(0)
  logits = rng.normal(size=[40, 8])
  labels = rng.integers(0, 8, size=[40])
  model = _FixedLogits(logits)
  strategy = tf.distribute.get_strategy()
  dataset = tf.data.Dataset.from_tensor_slices(
      (np.arange(40, dtype=np.float32)[:, None], labels)).batch(10)
  evaluate = evaluation.make_classification_evaluator(
      model, strategy, lambda: strategy.experimental_distribute_dataset(dataset))
  got = evaluate()
  ranks = np.argsort(-logits, axis=1)
  want1 = np.mean(ranks[:, 0] == labels)
  want5 = np.mean([labels[i] in ranks[i, :5] for i in range(40)])
  assert 0 < want1 < want5 < 1
  np.testing.assert_allclose([got["top1"], got["top5"]], [want1, want5], rtol=1e-6)
  assert evaluate() == got  # a second evaluation sees the same examples


if __name__ == "__main__":
  pytest_main.main(__file__)
