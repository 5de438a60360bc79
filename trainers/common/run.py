"""What both trainers' `train_and_evaluate` do around their own model and data: one place for
the start of a run (seed, determinism, strategy, the config checked against the replicas) and
its end (what a checkpoint holds, and the training loop under the strategy).

A trainer calls `start`, builds its model, optimizer, train step, input and evaluator under
the strategy it got, and hands them to `train` as a `Training`.
"""

import dataclasses
from typing import Any, Callable, Dict

import keras
import tensorflow as tf

from trainers.common import checkpoint_signature
from trainers.common import strategies
from trainers.common import training_loop

# Counting bad records with --skip_bad_records reads the data once more before training;
# beyond this many bytes the count is left out rather than doubling the read of a large set.
COUNT_BAD_RECORDS_MAX_BYTES = 2 << 30


@dataclasses.dataclass(frozen=True)
class Training:
  """A trainer's parts, built under the strategy `start` returned.

  model, optimizer, step and iterator are saved in every checkpoint (under the keys "model",
  "optimizer", "train_step" and "data_position"; with several workers each worker's
  "data_position" in its own, see `training_loop.run`), so these keys are the checkpoint
  format: renaming one breaks resuming older runs.
  """

  model: Any
  optimizer: Any  # an adam_xla.Adam
  schedule: Callable[[tf.Tensor], tf.Tensor]  # the learning rate at an int64 step
  step: Callable[[Any], Dict[str, tf.Tensor]]  # iterator -> the outputs of steps_per_loop
  iterator: Any  # over the distributed training data, from `resumable_input.iterate`
  evaluate: Callable[[], Dict[str, float]]


def start(config):
  """Seeds and determinism as `config` asks, then its strategy; returns the strategy.

  The config is validated again with the strategy's replicas, which the global batch must
  split evenly over (unknown when the flags were first checked).
  """
  if config.deterministic:
    tf.config.experimental.enable_op_determinism()
  keras.utils.set_random_seed(config.seed)
  strategy = strategies.create_strategy(config.strategy, tpu=config.tpu)
  config.validate(num_replicas=strategy.num_replicas_in_sync)
  return strategy


def train(config, total_steps, strategy, training):
  """Runs the training loop to `total_steps` (resuming, checkpointing, evaluating) under
  `strategy`; returns the last evaluation's metrics."""
  return training_loop.run(
      training_loop.loop_config(config, total_steps),
      train_step=lambda: training.step(training.iterator), evaluate=training.evaluate,
      checkpointed=dict(model=training.model, optimizer=training.optimizer,
                        train_step=training.step), per_worker=dict(data_position=training.iterator),
      learning_rate=lambda s: float(training.schedule(tf.constant(s, tf.int64))),
      signature=checkpoint_signature.describe(training.model,
                                              training.optimizer), workers=training_loop.Workers(
                                                  index=strategies.worker_index(strategy),
                                                  count=strategies.num_workers(strategy),
                                                  any_of=strategies.any_worker(strategy)))
