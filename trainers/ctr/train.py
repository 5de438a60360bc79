"""train_and_evaluate: the embedding (DLRM-style CTR) trainer as a function of its config."""

import os

from absl import logging
import tensorflow as tf

import adam_xla
from trainers.common import optimizer_setup
from trainers.common import resumable_input
from trainers.common import run
from trainers.ctr import criteo_data
from trainers.ctr import evaluation
from trainers.ctr import generated_clicks
from trainers.ctr import models

# Lines in the shuffle buffer: enough to mix a generated log's shards; it is saved with every
# checkpoint (as the input position), so it stays modest.
_SHUFFLE_BUFFER = 20_000


def _split_files(text):
  return tuple(part.strip() for part in text.split(",") if part.strip())


def prepare_data(config):
  """(train files, eval files, table sizes, planted AUC or None), generating data if asked."""
  if config.data_source == "criteo":
    return (_split_files(config.train_files), _split_files(config.eval_files),
            config.feature_table_sizes(), None)
  cache = config.data_dir or os.path.join(config.model_dir, "generated_data")
  log = generated_clicks.write_click_log(cache, config.generated_train_lines,
                                         config.generated_eval_lines, seed=config.seed)
  logging.info(
      "generated click log %s: planted model AUC %.4f on the eval split, click rate "
      "%.3f", log["directory"], log["planted_auc_eval"], log["click_rate_eval"])
  return (tuple(log["train_files"]), tuple(log["eval_files"]),
          config.feature_table_sizes(log["table_sizes"]), log["planted_auc_eval"])


def _log_bad_records(data_config):
  """Counting scans the files once: left out beyond run.COUNT_BAD_RECORDS_MAX_BYTES."""
  paths = criteo_data.list_files(data_config)
  size = sum(tf.io.gfile.stat(p).length for p in paths)
  if size > run.COUNT_BAD_RECORDS_MAX_BYTES:
    logging.info(
        "--skip_bad_records: %d files (%.1f GB) are too large to count bad lines "
        "up front; malformed lines are skipped silently", len(paths), size / 1e9)
    return
  count = criteo_data.count_bad_records(data_config)
  logging.info("--skip_bad_records: %d malformed line(s) skipped in %d file(s)", count, len(paths))


def _memory_estimate(table_sizes, embedding_dim, amsgrad):
  """Bytes of the tables and their Adam slots (sparse gradients are never made dense)."""
  return sum(table_sizes) * embedding_dim * 4 * (4 if amsgrad else 3)


def _tpu_parts(config, table_sizes, optimizer, strategy, train_data, eval_data):
  """The TPU path: tables in the TPU embedding API (see tpu_embedding; not run on hardware).

  Returns (model, step, train iterator, evaluate).
  """
  from trainers.ctr import tpu_embedding  # pylint: disable=g-import-not-at-top
  with strategy.scope():
    model = models.DLRM(table_sizes, config.embedding_dim, config.bottom_mlp, config.top_mlp,
                        name="dlrm")
  step = tpu_embedding.TPUEmbeddingStep(
      model, optimizer, global_batch_size=config.global_batch_size, num_dense=criteo_data.NUM_DENSE,
      steps_per_loop=config.steps_per_loop, strategy=strategy, initializer_seed=config.seed)
  train_iterator = resumable_input.iterate(
      strategy, lambda context: step.split(criteo_data.dataset(train_data, context).repeat()))
  evaluate = evaluation.make_ctr_evaluator(step.predict, strategy,
                                           lambda: step.distribute(criteo_data.dataset(eval_data)))
  return model, step, train_iterator, evaluate


def _xla_parts(config, table_sizes, optimizer, strategy, train_data, eval_data):
  """Everywhere else: the DLRM's own tables, trained by adam_xla's compiled step.

  Returns (model, step, train iterator, evaluate).
  """
  with strategy.scope():
    model = models.build_dlrm(table_sizes, config.embedding_dim, config.bottom_mlp, config.top_mlp,
                              num_dense=criteo_data.NUM_DENSE)
  # Sparse updates need the tables' own state: with --shard_optimizer_state only the MLPs'
  # state is split across replicas.
  optimizer.exclude_from_state_sharding(model.embedding.tables)
  step = adam_xla.make_train_step(model, models.sigmoid_cross_entropy, optimizer, strategy=strategy,
                                  steps_per_loop=config.steps_per_loop, skip_nonfinite=True)
  train_iterator = resumable_input.iterate(
      strategy, lambda context: criteo_data.dataset(train_data, context).repeat())
  evaluate = evaluation.make_ctr_evaluator(
      evaluation.model_predictions(model, strategy), strategy,
      lambda: strategy.distribute_datasets_from_function(lambda context: criteo_data.dataset(
          eval_data, context)))
  return model, step, train_iterator, evaluate


def train_and_evaluate(config):
  """Trains and evaluates as `config` says; returns the final evaluation metrics.

  The metrics include "planted_auc" (the generating model's own AUC) for generated data.
  """
  strategy = run.start(config)
  train_files, eval_files, table_sizes, planted_auc = prepare_data(config)
  data_config = lambda files, shuffle: criteo_data.CriteoConfig(
      files=files, table_sizes=table_sizes, batch_size=config.global_batch_size, skip_bad_records=
      config.skip_bad_records, shuffle=shuffle, seed=config.seed, shuffle_buffer=_SHUFFLE_BUFFER)
  train_data, eval_data = data_config(train_files, True), data_config(eval_files, False)
  if config.skip_bad_records:
    _log_bad_records(train_data)
    _log_bad_records(eval_data)

  with strategy.scope():
    schedule, optimizer = optimizer_setup.make_optimizer(config, config.train_steps,
                                                         sparse_mode=config.sparse_mode)
  parts = _tpu_parts if config.strategy == "tpu" else _xla_parts
  model, step, train_iterator, evaluate_model = parts(config, table_sizes, optimizer, strategy,
                                                      train_data, eval_data)
  logging.info(
      "DLRM: %d parameters in %d tables of dim %d (%.2f GB with Adam's state); "
      "sparse_mode %s; %d steps of %d examples; strategy %s with %d replica(s)",
      sum(table_sizes) * config.embedding_dim, len(table_sizes), config.embedding_dim,
      _memory_estimate(table_sizes, config.embedding_dim, config.amsgrad) / 1e9, config.sparse_mode,
      config.train_steps, config.global_batch_size,
      type(strategy).__name__, strategy.num_replicas_in_sync)

  def evaluate():
    return {**evaluate_model(), **({"planted_auc": planted_auc} if planted_auc else {})}

  # On TPU the step holds the tables (step.embedding), so they are saved with it.
  return run.train(
      config, config.train_steps, strategy,
      run.Training(model=model, optimizer=optimizer, schedule=schedule, step=step,
                   iterator=train_iterator, evaluate=evaluate))
