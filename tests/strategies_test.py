"""Tests of trainers/common/strategies.py on one process: the strategies --strategy names (and
the plan adam_xla's step takes under each), who is chief and how many workers there are
without a cluster, and a function run on the replicas of a 2-replica MirroredStrategy, summed
or brought back in example order. tests/multi_worker_test.py runs the helpers in a cluster."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from tests import logical_cpus
from tests import pytest_main
from trainers.common import strategies

logical_cpus.require(2)  # before anything starts the TF runtime

import adam_xla  # pylint: disable=g-import-not-at-top,wrong-import-position


def _plan(strategy):
  """The plan of adam_xla's train step for a small model made under `strategy`."""
  with strategy.scope():
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    optimizer = adam_xla.Adam(0.1)
  loss = lambda labels, predictions: tf.square(predictions[:, 0] - labels)
  return adam_xla.make_train_step(model, loss, optimizer, strategy=strategy).plan


def test_create_strategy_for_cpu_kinds_and_their_plans():
  assert strategies.create_strategy("default") is tf.distribute.get_strategy()
  one = strategies.create_strategy("one_device")
  assert isinstance(one, tf.distribute.OneDeviceStrategy)
  assert _plan(one) == "single_program"
  mirrored = strategies.create_strategy("mirrored")
  assert mirrored.num_replicas_in_sync == 2  # both logical CPUs of this process
  assert _plan(mirrored) == "replica_programs"
  assert _plan(tf.distribute.get_strategy()) == "single_program"


def test_create_strategy_rejects_unknown_kind_and_tpu_without_address():
  with pytest.raises(
      ValueError, match=r"unknown strategy 'gpu'; accepted: default, "
      r"one_device, mirrored, multi_worker, tpu"):
    strategies.create_strategy("gpu")
  with pytest.raises(ValueError, match="needs a TPU"):
    strategies.create_strategy("tpu")


@pytest.mark.parametrize("kind", ["default", "one_device", "mirrored"])
def test_one_process_is_one_worker_and_the_chief(kind):
  strategy = strategies.create_strategy(kind)
  assert strategies.num_workers(strategy) == 1
  assert strategies.worker_index(strategy) == 0
  assert strategies.any_worker(strategy) is bool  # no all-reduce for one worker


def test_on_replicas_sums_or_returns_each_replicas_values():
  strategy = strategies.create_strategy("mirrored")
  examples = np.arange(8, dtype=np.float32)
  batch = next(
      iter(
          strategy.experimental_distribute_dataset(
              tf.data.Dataset.from_tensor_slices(examples).batch(8))))
  replica_fn = lambda x: {"count": tf.cast(tf.size(x), tf.float32), "double": 2 * x}
  summed = strategies.on_replicas(strategy, lambda x: replica_fn(x)["count"], summed=True)
  assert float(summed(batch)) == 8.0  # 4 examples on each replica
  values = strategies.local_values(strategy, strategies.on_replicas(strategy, replica_fn)(batch))
  np.testing.assert_array_equal(values["double"], 2 * examples)  # in the batch's order
  np.testing.assert_array_equal(values["count"], [4.0, 4.0])  # one scalar per replica


if __name__ == "__main__":
  pytest_main.main(__file__)
