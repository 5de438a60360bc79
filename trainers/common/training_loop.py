"""The outer training loop shared by the trainers: checkpoints, TensorBoard, evaluation,
progress lines and resume. The compiled step only computes; everything with side effects on
disk or screen happens here, between calls.
"""

import dataclasses
import math
import os
import time
from typing import Callable, Dict

from absl import logging
import tensorflow as tf


@dataclasses.dataclass(frozen=True)
class LoopConfig:
  """Validated by the trainer's config; see the trainers' flags for the meaning."""

  model_dir: str
  train_steps: int
  steps_per_loop: int
  eval_every: int  # 0: evaluate only at the end
  log_every: int
  keep_checkpoints: int
  global_batch_size: int


def loop_config(config, total_steps):
  """The loop's settings from a trainer config's shared run fields (see `common.config`)."""
  return LoopConfig(
      model_dir=config.model_dir, train_steps=total_steps,
      steps_per_loop=config.steps_per_loop, eval_every=config.eval_every,
      log_every=config.log_every or total_steps, keep_checkpoints=config.keep_checkpoints,
      global_batch_size=config.global_batch_size)


def data_position(iterator):
  """The input iterator as a checkpoint entry, where tf.data can save it.

  A single-device iterator saves its position (shuffle buffers included), so a resumed run
  sees exactly the examples an uninterrupted one would. Distributed iterators from
  `distribute_datasets_from_function` cannot be saved; a resumed run then restarts the input
  pipeline (same seed, so from the same first example).
  """
  if isinstance(iterator, tf.__internal__.tracking.Trackable):
    return {"data_position": iterator}
  logging.warning("the input position cannot be checkpointed under this strategy; a resumed "
                  "run restarts the input pipeline from its beginning")
  return {}


class Progress:
  """Progress lines with examples/sec and ETA, measured over the steps since the last line."""

  def __init__(self, total_steps, global_batch_size, start_step):
    self._total, self._batch = total_steps, global_batch_size
    self._last_step, self._last_time = start_step, time.perf_counter()

  def line(self, step, metrics, learning_rate):
    now = time.perf_counter()
    steps = step - self._last_step
    rate = steps * self._batch / max(now - self._last_time, 1e-9)
    self._last_step, self._last_time = step, now
    remaining = (self._total - step) * self._batch / rate if rate else float("inf")
    shown = "  ".join(f"{k} {v:.4f}" for k, v in metrics.items())
    text = (f"step {step}/{self._total} ({100.0 * step / self._total:.0f}%)  {shown}  "
            f"lr {learning_rate:.3g}  {rate:.1f} examples/s  ETA {_duration(remaining)}")
    return text, rate


def _duration(seconds):
  if not math.isfinite(seconds):
    return "?"
  seconds = int(round(seconds))
  return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def _write_scalars(writer, step, scalars):
  with writer.as_default(step=step):
    for name, value in scalars.items():
      tf.summary.scalar(name, value)
  writer.flush()


def run(config: LoopConfig, *, train_step: Callable[[], Dict[str, tf.Tensor]],
        step_counter: tf.Variable, evaluate: Callable[[], Dict[str, float]],
        checkpoint: tf.train.Checkpoint, learning_rate: Callable[[int], float]):
  """Trains to `config.train_steps`, resuming from the last checkpoint in model_dir.

  Args:
    config: the loop's settings.
    train_step: runs `steps_per_loop` steps and returns their metrics.
    step_counter: the optimizer's `iterations` (restored with the checkpoint).
    evaluate: returns evaluation metrics (floats).
    checkpoint: everything to save and restore (model, optimizer, train step, data iterator).
    learning_rate: the rate at a step, for the progress lines and TensorBoard.

  Returns:
    The last evaluation's metrics.
  """
  manager = tf.train.CheckpointManager(
      checkpoint, os.path.join(config.model_dir, "checkpoints"),
      max_to_keep=config.keep_checkpoints)
  if manager.latest_checkpoint:
    checkpoint.restore(manager.latest_checkpoint).assert_existing_objects_matched()
    logging.info("resuming from %s at step %d", manager.latest_checkpoint,
                 int(step_counter.numpy()))
  step = int(step_counter.numpy())
  if step >= config.train_steps:
    logging.info("already trained %d of %d steps; evaluating only", step, config.train_steps)
    return evaluate()
  train_writer = tf.summary.create_file_writer(os.path.join(config.model_dir, "train"))
  eval_writer = tf.summary.create_file_writer(os.path.join(config.model_dir, "eval"))
  progress = Progress(config.train_steps, config.global_batch_size, step)
  logging.info("compiling the first step ...")
  eval_metrics = {}
  while step < config.train_steps:
    metrics = {k: float(v) for k, v in train_step().items()}
    step = int(step_counter.numpy())
    if not all(math.isfinite(v) for v in metrics.values() if v is not None):
      raise FloatingPointError(f"non-finite training metrics at step {step}: {metrics}; the "
                               f"last good checkpoint is {manager.latest_checkpoint}.")
    last = step >= config.train_steps
    if step % config.log_every == 0 or last:
      rate_now = learning_rate(step)
      text, examples_per_sec = progress.line(step, metrics, rate_now)
      logging.info("%s", text)
      _write_scalars(train_writer, step, {**metrics, "learning_rate": rate_now,
                                          "examples_per_sec": examples_per_sec})
    if (config.eval_every and step % config.eval_every == 0) or last:
      eval_metrics = evaluate()
      logging.info("eval at step %d: %s", step,
                   "  ".join(f"{k} {v:.4f}" for k, v in eval_metrics.items()))
      _write_scalars(eval_writer, step, eval_metrics)
      manager.save(checkpoint_number=step)
  return eval_metrics
