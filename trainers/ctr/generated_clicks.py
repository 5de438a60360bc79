"""A generated click log in Criteo's TSV layout, so the CTR trainer runs with no download.

Categorical ids follow a Zipf law (exponent 1.1) over each feature's vocabulary, with the
frequency ranks scattered over the ids, as in real logs where a few ids dominate. Labels come
from a planted logistic model: a random weight per id of each categorical feature, a random
weight per dense feature (on the reader's log(1 + max(x, 0)) transform) and a bias setting the
click rate near Criteo's 25%; each label is Bernoulli(sigmoid(logit)). The planted model's own
AUC on the data is the ceiling a trained model can approach, and is returned and recorded.
About 2% of integer and of categorical values are missing (empty); they add nothing to the
logit, as the reader maps them to 0 and to the reserved id 0.

Ids are written as 8 hex digits of the id itself, so with `table_sizes(vocab_sizes)` the reader
maps id k to row k + 1 with no collisions.
"""

import gzip as gzip_lib
import hashlib
import json
import os
import time

from absl import logging
import numpy as np
import tensorflow as tf

from trainers.common import generated_files
from trainers.ctr import metrics
from trainers.ctr.criteo_format import NUM_DENSE
from trainers.ctr.criteo_format import NUM_SPARSE

ZIPF_EXPONENT = 1.1
MISSING_RATE = 0.02
# Loosely Criteo-shaped: a few tiny, several mid-size and a few large vocabularies.
DEFAULT_VOCAB_SIZES = (1000, 500, 20000, 10000, 300, 20, 10000, 600, 3, 30000, 5000, 20000, 3000,
                       25, 10000, 20000, 10, 4000, 2000, 4, 20000, 15, 15, 30000, 100, 25000)
_TRAIN_SHARDS = 4
_EVAL_SHARDS = 1
_CHUNK = 50_000  # lines drawn per vectorized numpy call
_FILE_KEYS = ("train_files", "eval_files")
_FORMAT_VERSION = 1
_ID_WEIGHT_STD = 0.25
_DENSE_WEIGHT_STD = 0.4
_DENSE_LOG_STD = 1.5
_BASE_RATE = 0.25
_CALIBRATION_LINES = 20_000


def table_sizes(vocab_sizes):
  """Embedding table sizes that hold every id of `vocab_sizes` plus the missing row 0."""
  return tuple(int(v) + 1 for v in vocab_sizes)


class _PlantedModel:
  """The ground truth: id frequencies and the logistic model producing the labels."""

  def __init__(self, vocab_sizes, rng):
    self.vocab_sizes = vocab_sizes
    self.cdfs, self.rank_to_id, self.id_weights = [], [], []
    for size in vocab_sizes:
      p = 1.0 / np.arange(1, size + 1)**ZIPF_EXPONENT
      self.cdfs.append(np.cumsum(p) / p.sum())
      self.rank_to_id.append(rng.permutation(size))
      self.id_weights.append(rng.normal(0.0, _ID_WEIGHT_STD, size))
    self.dense_log_mean = rng.uniform(0.0, 4.0, NUM_DENSE)
    self.dense_weights = rng.normal(0.0, _DENSE_WEIGHT_STD, NUM_DENSE)
    # The bias that sets the mean click probability to _BASE_RATE, by bisection on a sample.
    self.bias = 0.0
    sample = self._logits_and_features(_CALIBRATION_LINES, rng)[0]
    low, high = -20.0, 20.0
    for _ in range(50):
      self.bias = (low + high) / 2
      if np.mean(1.0 / (1.0 + np.exp(-(sample + self.bias)))) > _BASE_RATE:
        high = self.bias
      else:
        low = self.bias

  def draw(self, n, rng):
    """(labels int [n], logits [n], ints int64 [n, 13], ids int64 [n, 26]); -1 = missing."""
    logits, ints, ids = self._logits_and_features(n, rng)
    logits += self.bias
    labels = (rng.random(n) < 1.0 / (1.0 + np.exp(-logits))).astype(np.int64)
    return labels, logits, ints, ids

  def _logits_and_features(self, n, rng):
    """Logits without the bias, and the features with missing values marked."""
    ints = np.floor(np.exp(rng.normal(self.dense_log_mean, _DENSE_LOG_STD, (n, NUM_DENSE))))
    ints = ints.astype(np.int64)
    ints[:, 1] -= 3  # like Criteo's I2, some counts go negative
    int_missing = rng.random((n, NUM_DENSE)) < MISSING_RATE
    transformed = np.where(int_missing, 0.0, np.log1p(np.maximum(ints, 0)))
    logits = ((transformed - self.dense_log_mean) / _DENSE_LOG_STD) @ self.dense_weights
    ids = np.empty((n, NUM_SPARSE), np.int64)
    id_missing = rng.random((n, NUM_SPARSE)) < MISSING_RATE
    for f in range(NUM_SPARSE):
      ranks = np.minimum(np.searchsorted(self.cdfs[f], rng.random(n)), self.vocab_sizes[f] - 1)
      ids[:, f] = self.rank_to_id[f][ranks]
      logits += np.where(id_missing[:, f], 0.0, self.id_weights[f][ids[:, f]])
    ints[int_missing] = np.iinfo(np.int64).min
    ids[id_missing] = -1
    return logits, ints, ids


def _format_lines(labels, ints, ids):
  """The TSV text of a chunk: label, 13 integers, 26 categorical ids as 8 hex digits."""
  missing_int = np.iinfo(np.int64).min
  columns = [list(map(str, labels.tolist()))]
  for j in range(NUM_DENSE):
    columns.append(["" if v == missing_int else str(v) for v in ints[:, j].tolist()])
  for f in range(NUM_SPARSE):
    columns.append(["" if v < 0 else f"{v:08x}" for v in ids[:, f].tolist()])
  return "".join("\t".join(row) + "\n" for row in zip(*columns))


def _write_split(directory, split, num_lines, num_shards, model, rng, gzip):
  """Writes the split's shards; returns (file names, planted AUC)."""
  bounds = np.linspace(0, num_lines, num_shards + 1).round().astype(int)
  all_labels, all_logits, names = [], [], []
  for shard in range(num_shards):
    name = f"{split}-{shard:05d}-of-{num_shards:05d}.tsv" + (".gz" if gzip else "")
    with tf.io.gfile.GFile(os.path.join(directory, name), "wb") as raw:
      out = gzip_lib.GzipFile(fileobj=raw, mode="wb", compresslevel=3, mtime=0) if gzip else raw
      for start in range(bounds[shard], bounds[shard + 1], _CHUNK):
        labels, logits, ints, ids = model.draw(min(_CHUNK, bounds[shard + 1] - start), rng)
        out.write(_format_lines(labels, ints, ids).encode("ascii"))
        all_labels.append(labels)
        all_logits.append(logits)
      if gzip:
        out.close()
    names.append(name)
  labels, logits = np.concatenate(all_labels), np.concatenate(all_logits)
  return names, metrics.auc(labels, logits), float(labels.mean())


def _generate(path, params):
  seed, vocab_sizes, gzip = params["seed"], params["vocab_sizes"], params["gzip"]
  model = _PlantedModel(vocab_sizes, np.random.default_rng([seed, 0]))
  train, train_auc, train_rate = _write_split(path, "train", params["num_train"],
                                              min(_TRAIN_SHARDS, params["num_train"]), model,
                                              np.random.default_rng([seed, 1]), gzip)
  evaluation, eval_auc, eval_rate = _write_split(path, "eval", params["num_eval"],
                                                 min(_EVAL_SHARDS, params["num_eval"]), model,
                                                 np.random.default_rng([seed, 2]), gzip)
  generated_files.write_manifest(
      path, {
          "params": params, "train_files": train, "eval_files": evaluation,
          "planted_auc_train": train_auc, "planted_auc_eval": eval_auc,
          "click_rate_train": train_rate, "click_rate_eval": eval_rate
      })


def write_click_log(directory, num_train, num_eval, vocab_sizes=DEFAULT_VOCAB_SIZES, seed=0,
                    gzip=False):
  """Writes the click log under `directory` once; returns where it is and its ceilings.

  Returns a dict: `directory` (of the files), `train_files` and `eval_files` (full paths, for
  `CriteoConfig.files`), `table_sizes`, `planted_auc_train` and `planted_auc_eval` (the AUC of
  the true logits), `click_rate_train` and `click_rate_eval`. The files go to a subdirectory
  named by the parameters, so different logs coexist, and a complete log with a matching
  manifest is reused. Locally the log is written into a temporary directory and renamed into
  place, so a crash or a concurrent writer never leaves a half-written log; on remote file
  systems (gs://) the manifest, written last, marks completion.
  """
  for name, value, low in (("num_train", num_train, 1), ("num_eval", num_eval, 1)):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
      raise ValueError(f"write_click_log: `{name}` must be an integer >= {low}; got {value!r}.")
  vocab_sizes = [int(v) for v in vocab_sizes]
  if len(vocab_sizes) != NUM_SPARSE or min(vocab_sizes) < 1 or max(vocab_sizes) > 16**8:
    raise ValueError(f"write_click_log: `vocab_sizes` must be {NUM_SPARSE} integers in [1, "
                     f"16**8] (ids are written as 8 hex digits); got {vocab_sizes!r}.")
  params = {
      "version": _FORMAT_VERSION, "num_train": int(num_train), "num_eval": int(num_eval),
      "vocab_sizes": vocab_sizes, "seed": int(seed), "gzip": bool(gzip)
  }
  digest = hashlib.sha256(json.dumps(vocab_sizes).encode()).hexdigest()[:8]
  path = os.path.join(
      directory, f"clicks-t{num_train}-e{num_eval}-v{digest}-seed{seed}" + ("-gz" if gzip else ""))
  start = time.time()
  if generated_files.build_once(directory, path, params, _FILE_KEYS,
                                lambda target: _generate(target, params)):
    logging.info("Generated a click log of %d + %d lines in %s (%.1f s).", num_train, num_eval,
                 path,
                 time.time() - start)
  manifest = generated_files.read_manifest(path)
  return {
      "directory": path,
      "train_files": [os.path.join(path, name) for name in manifest["train_files"]],
      "eval_files": [os.path.join(path, name) for name in manifest["eval_files"]],
      "table_sizes": table_sizes(vocab_sizes),
      "planted_auc_train": manifest["planted_auc_train"],
      "planted_auc_eval": manifest["planted_auc_eval"],
      "click_rate_train": manifest["click_rate_train"],
      "click_rate_eval": manifest["click_rate_eval"],
  }
