"""train_and_evaluate: the ImageNet-style trainer as a library function of its config."""

import os

from absl import logging
import keras
import tensorflow as tf

import adam_xla
from trainers.common import evaluation
from trainers.common import optimizer_setup
from trainers.common import resumable_input
from trainers.common import run
from trainers.image_classification import data
from trainers.image_classification import generated_data
from trainers.image_classification import models

_POLICIES = {"float32": "float32", "bfloat16": "mixed_bfloat16", "float16": "mixed_float16"}
# Batch norm's scale and offset and every bias are not decayed (the usual AdamW practice).
_NO_DECAY = ["bias", "gamma", "beta"]


def make_loss(label_smoothing):
  """Per-example cross-entropy from logits, with labels smoothed towards uniform."""

  def loss(labels, logits):
    log_probs = tf.nn.log_softmax(tf.cast(logits, tf.float32))
    labels = tf.reshape(tf.cast(labels, tf.int32), [-1])
    nll = -tf.gather(log_probs, labels, batch_dims=1)
    if not label_smoothing:
      return nll
    uniform = -tf.reduce_mean(log_probs, axis=-1)
    return (1.0 - label_smoothing) * nll + label_smoothing * uniform

  return loss


def resolve_xla_scope(xla_scope):
  """"auto": the whole step on GPU/TPU, only the update on CPU (docs/performance.md, "Where
  the time goes": XLA:CPU's convolution gradients are slow)."""
  if xla_scope != "auto":
    return xla_scope
  accelerators = tf.config.list_logical_devices("GPU") + tf.config.list_logical_devices("TPU")
  return "step" if accelerators else "update"


def _data_config(config, data_dir):
  return data.DataConfig(source="tfds" if config.data_source == "tfds" else "tfrecord",
                         data_dir=data_dir, image_size=config.image_size,
                         num_classes=config.num_classes, global_batch_size=config.global_batch_size,
                         seed=config.seed, deterministic=config.deterministic,
                         skip_bad_records=config.skip_bad_records)


def _log_bad_records(data_config, split):
  """Counting decodes every image once: left out beyond run.COUNT_BAD_RECORDS_MAX_BYTES."""
  _, sizes = data.usable_shards(data_config.data_dir, split)
  if sum(sizes) > run.COUNT_BAD_RECORDS_MAX_BYTES:
    logging.info(
        "--skip_bad_records: the %s shards (%.1f GB) are too large to count bad "
        "records up front; they are dropped without a count", split,
        sum(sizes) / 1e9)
    return
  logging.info("--skip_bad_records: %d bad %s record(s) skipped in %d shard(s)",
               data.count_bad_records(data_config, split), split, len(sizes))


def _prepare_data_dir(config):
  if config.data_source != "generated":
    return config.data_dir, None
  cache = config.data_dir or os.path.join(config.model_dir, "generated_data")
  size = max(config.image_size + config.image_size // 4, config.image_size)
  directory = generated_data.ensure_generated_data(cache, num_classes=config.num_classes,
                                                   image_size=size, seed=config.seed)
  return directory, generated_data.DEFAULT_TRAIN_EXAMPLES


def train_and_evaluate(config):
  """Trains and evaluates as `config` says; returns the final evaluation metrics."""
  strategy = run.start(config)
  keras.mixed_precision.set_global_policy(_POLICIES[config.dtype])
  data_dir, generated_examples = _prepare_data_dir(config)
  data_config = _data_config(config, data_dir)
  if config.skip_bad_records and data_config.source != "tfds":
    for split in ("train", "validation"):
      _log_bad_records(data_config, split)
  total_steps = config.total_steps(generated_examples or 0)

  with strategy.scope():
    model = models.build_model(config.model, config.num_classes, config.image_size)
    schedule, optimizer = optimizer_setup.make_optimizer(
        config, total_steps, reference_batch_size=config.lr_batch_scale or None)
  optimizer.exclude_from_weight_decay(var_names=_NO_DECAY)
  step = adam_xla.make_train_step(model, make_loss(config.label_smoothing), optimizer, metrics=[
      "accuracy"
  ], strategy=strategy, steps_per_loop=config.steps_per_loop,
                                  loss_scaling="dynamic" if config.dtype == "float16" else None,
                                  xla_scope=resolve_xla_scope(config.xla_scope),
                                  skip_nonfinite=True)
  logging.info(
      "model %s: %d parameters; %d steps of %d examples; strategy %s with %d "
      "replica(s); data %s", config.model, model.count_params(), total_steps,
      config.global_batch_size,
      type(strategy).__name__, strategy.num_replicas_in_sync, data_dir)

  train_iterator = resumable_input.iterate(strategy,
                                           lambda context: data.train_dataset(data_config, context))
  evaluate = evaluation.make_classification_evaluator(
      model, strategy,
      lambda: strategy.distribute_datasets_from_function(lambda context: data.eval_dataset(
          data_config, context)))
  return run.train(
      config, total_steps, strategy,
      run.Training(model=model, optimizer=optimizer, schedule=schedule, step=step,
                   iterator=train_iterator, evaluate=evaluate))
