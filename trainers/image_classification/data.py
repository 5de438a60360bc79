"""ImageNet input pipeline: JPEG TFRecord shards (local or gs://) or TFDS `imagenet2012`.

Shards follow the layout of the usual ImageNet-to-TFRecord converters (and of
`tools/convert_imagenet.py` and `generated_data.py`): files `train-*` and `validation-*` in
one directory, each record a `tf.train.Example` with `image/encoded` (JPEG bytes) and
`image/class/label` (int64, 1-based). Both sources share one decode and augmentation path:
random-resized crop and flip for training, center crop for evaluation, then ImageNet
mean/std normalization.

Bad data stops the pipeline with an InvalidArgumentError "ImageNet data: bad record ..."
followed by "<file>:<record>: <problem>" (records count from 0, as in
`tf.data.TFRecordDataset(file).skip(record)`): a record that is not a `tf.train.Example` with one
bytes `image/encoded` and one int64 `image/class/label`, a label outside [0, num_classes) after
`label_offset`, image bytes that are not a JPEG or do not decode, or a shard whose TFRecord
framing breaks (a length or CRC check or the read fails; the record is where reading stopped).
The error comes when the bad record is reached (for a broken shard in training: when its end
leaves the shuffle buffer). Empty shards (0 bytes) are left out with a warning naming them; all
empty is a ValueError.

With `skip_bad_records=True` bad records are dropped instead. A broken shard cannot be skipped
record by record (the records after a framing error cannot be found), so it is read up to the
break and the rest is dropped, printed with the file name on every pass. `count_bad_records(
config, split)` scans a split once, returns how many records are bad and logs the first few
with file, record and problem; the pipeline keeps no counter (state in tf.data that would not
survive checkpoints or several workers). TFDS data is prepared and checked by TFDS; with
`skip_bad_records` its records that fail to decode or have a bad label are dropped.
"""

import concurrent.futures
import dataclasses
import os
import random
import sys
from typing import Optional

from absl import logging
import tensorflow as tf

from trainers.image_classification.config import TFDS_CLASSES

SOURCES = ("tfrecord", "tfds", "generated")  # generated data is read as tfrecord shards
SPLIT_PREFIXES = {"train": "train", "validation": "validation"}
MEAN_RGB = (0.485 * 255, 0.456 * 255, 0.406 * 255)
STDDEV_RGB = (0.229 * 255, 0.224 * 255, 0.225 * 255)
EVAL_CROP_FRACTION = 0.875  # 224 of 256, the usual ResNet evaluation crop
CROP_AREA_RANGE = (0.08, 1.0)
CROP_ASPECT_RATIO_RANGE = (3 / 4, 4 / 3)
_MAX_CYCLE_LENGTH = 16
_READ_BUFFER_BYTES = 8 << 20
_RECORD_FRAMING_BYTES = 16  # per TFRecord record: length (8 bytes), its CRC (4), data CRC (4)
# Records checked per vectorized call: per-element tf.data functions cost more than the checks.
_CHECK_BATCH = 128
_SHARD_BATCH = 32  # smaller: up to _MAX_CYCLE_LENGTH shards hold a batch of encoded records
_STAT_THREADS = 32  # shard sizes are read in parallel: one request per file on gs://
_MAX_NAMED = 10  # empty shards named in the warning
_FEATURES = {
    "image/encoded": tf.io.FixedLenFeature([], tf.string),
    "image/class/label": tf.io.FixedLenFeature([], tf.int64),
}
_ANY_COUNT_FEATURES = {  # parses whatever number of values there is, to say what is wrong
    "image/encoded": tf.io.RaggedFeature(tf.string),
    "image/class/label": tf.io.RaggedFeature(tf.int64),
}
_BAD_RECORD = "ImageNet data: bad record (skip_bad_records=True drops bad records instead)"
_NOT_EXAMPLE = ("the record is not a tf.train.Example with one bytes feature image/encoded and "
                "one int64 feature image/class/label")
_HOW_TO_GET_DATA = (
    "Train on the built-in data with --data_source=generated, or convert a folder of class "
    "sub-folders of JPEGs with ./bazelw run //tools:convert_imagenet (--split=train and "
    "--split=validation).")


@dataclasses.dataclass(frozen=True)
class DataConfig:
  """What to read and how. Validated on construction.

  source: "tfrecord" (shards in `data_dir`), "tfds" (`imagenet2012` under the TFDS
    `data_dir`); "generated" is read as "tfrecord" (the caller passes its cache dir).
  label_offset: subtracted from `image/class/label` of TFRecord shards (1-based in the
    usual layout); TFDS labels are 0-based already and are not shifted.
  seed: seeds file and example shuffling and the augmentation; None picks one at random
    (0 when `deterministic`).
  deterministic: tf.data produces elements in a fixed order, so with the same seed the
    stream is the same on every run (parallel stages may run slower).
  skip_bad_records: drop records that fail to parse or decode or have a label out of range
    instead of failing on the first (see the module docstring).
  """

  source: str
  data_dir: str
  image_size: int
  num_classes: int
  global_batch_size: int
  label_offset: int = 1
  shuffle_buffer: int = 10000
  seed: Optional[int] = None
  deterministic: bool = False
  skip_bad_records: bool = False

  def __post_init__(self):
    if self.source not in SOURCES:
      raise ValueError(f"DataConfig: `source` must be one of {SOURCES}; got {self.source!r}.")
    if not self.data_dir or not isinstance(self.data_dir, str):
      raise ValueError(f"DataConfig: `data_dir` must be a non-empty path; got "
                       f"{self.data_dir!r}. {_HOW_TO_GET_DATA}")
    for name in ("image_size", "num_classes", "global_batch_size", "shuffle_buffer"):
      value = getattr(self, name)
      if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"DataConfig: `{name}` must be an integer >= 1; got {value!r}.")
    if self.source == "tfds" and self.num_classes != TFDS_CLASSES:
      raise ValueError(f"DataConfig: `num_classes` must be {TFDS_CLASSES} with source 'tfds' "
                       f"(imagenet2012 labels are 0-based over its {TFDS_CLASSES} classes); "
                       f"got {self.num_classes!r}.")
    if not isinstance(self.skip_bad_records, bool):
      raise ValueError(f"DataConfig: `skip_bad_records` must be True or False; got "
                       f"{self.skip_bad_records!r}.")


def train_dataset(config, input_context=None):
  """Endless shuffled, augmented training batches of (image, label).

  Images are float32 [batch, image_size, image_size, 3], normalized with the ImageNet mean
  and standard deviation; labels int64 [batch] in [0, num_classes). The batch is the
  per-replica batch size when `input_context` (a `tf.distribute.InputContext`) is given,
  else `global_batch_size`; the remainder is dropped so every batch has a static shape.
  With several input pipelines (hosts), each reads its own subset of the shards.
  """
  return _dataset(config, "train", input_context, training=True)


def eval_dataset(config, input_context=None):
  """One pass of center-cropped evaluation batches of (image, label), as `train_dataset`.

  The remainder is dropped here too (static shapes for compiled steps and TPUs), so up to
  `batch - 1` examples per input pipeline are not evaluated; with several input pipelines
  each evaluates its own subset of the shards.
  """
  return _dataset(config, "validation", input_context, training=False)


def _dataset(config, split, input_context, training):
  num_pipelines = input_context.num_input_pipelines if input_context else 1
  pipeline_id = input_context.input_pipeline_id if input_context else 0
  batch_size = (input_context.get_per_replica_batch_size(config.global_batch_size)
                if input_context else config.global_batch_size)
  seed = config.seed
  if seed is None and config.deterministic:
    seed = 0
  if training:
    # Stateless augmentation keyed by (seed, element position): reproducible with a seed, and
    # the iterator stays checkpointable (no stateful random ops in the map).
    base_seed = seed if seed is not None else random.randrange(2**31)

    def image(encoded, position):
      element_seed = tf.stack([
          tf.constant(base_seed, tf.int64), position * num_pipelines + pipeline_id
      ])
      return _train_image(encoded, config.image_size, element_seed)
  else:
    image = lambda encoded, position: _eval_image(encoded, config.image_size)

  if config.source == "tfds":
    records = _tfds_records(config, split, input_context, training, seed)
    if training:
      records = records.shuffle(config.shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
      records = records.repeat()
    dataset = records.enumerate().map(
        lambda position, record: (image(record[0], position), record[1]),
        num_parallel_calls=tf.data.AUTOTUNE)
    if config.skip_bad_records:
      dataset = dataset.ignore_errors()
  else:
    records, files = _tfrecord_records(config, split, num_pipelines, pipeline_id, training, seed)
    no_records = (
        f"ImageNet data: no usable record in the {len(files)} {split} shard(s) this "
        f"input pipeline reads (e.g. '{files[0]}')" +
        (": every record is bad and skip_bad_records drops it" if config.skip_bad_records else ""))
    dataset = _checked_images(records, image, config, training, seed, no_records)
  dataset = dataset.batch(batch_size, drop_remainder=True)
  dataset = dataset.prefetch(tf.data.AUTOTUNE)
  options = tf.data.Options()
  options.deterministic = config.deterministic
  return dataset.with_options(options)


def _checked_images(records, image, config, training, seed, no_records):
  """(image, label) of the shard records, each checked; for training shuffled, endlessly.

  A record that fails to parse or decode fails an op, which tf.data cannot catch inside a map;
  so the map's errors are dropped (ignore_errors) and found as gaps in the numbering of the
  elements. Each element carries its predecessor's file and record, so a gap names the bad
  record, whose problem is then found by reading it again step by step. A marker in every pass
  (at its end for evaluation, anywhere for training) gives a bad last record a successor and
  stops passes without usable records from repeating forever. The bookkeeping runs on batches:
  per-element tf.data functions would cost more than the decoding.
  """
  checking = not config.skip_bad_records
  records = records.concatenate(
      tf.data.Dataset.from_tensors({
          "path": tf.constant(""), "index": tf.constant(-1, tf.int64),
          "serialized": tf.constant(b""), "end": tf.constant(True), "problem": tf.constant("")
      }))
  if training:
    # The marker goes in before the shuffle: shuffle and repeat must be adjacent (fused), or
    # the reshuffling of later passes is not restored from checkpoints.
    records = records.shuffle(config.shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
    records = records.repeat()
  numbered = records.enumerate()
  if checking:
    first = {"path": tf.constant(""), "index": tf.constant(-1, tf.int64)}
    numbered = numbered.batch(_CHECK_BATCH).scan(first, _with_previous).unbatch()

  def read(position, record, *previous):

    def decode():
      example = tf.io.parse_single_example(record["serialized"], _FEATURES)
      label = _check_label(example["image/class/label"] - config.label_offset, config)
      return image(example["image/encoded"], position), label

    pixels, label = tf.cond(record["end"], lambda: _no_image(config), decode)
    return (position, record["end"], record["problem"], pixels, label) + previous

  # In order: gaps find bad records (and skipping measured faster so too).
  decoded = numbered.map(read, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  # Usable records before the first marker: unknown in training (the marker may come first).
  before_first = tf.constant(1 if training else 0, tf.int64)
  checked = decoded.ignore_errors().batch(_CHECK_BATCH).scan(
      (tf.constant(0, tf.int64), before_first, tf.constant(0, tf.int64)),
      lambda state, batch: _check_batch(state, batch, checking, no_records))

  def expand(pixels, label, failure):
    # Errors are raised from datasets rather than ops: reading a record again inside an op
    # would make the iterator impossible to checkpoint.
    images = tf.data.Dataset.from_tensor_slices((pixels, label))
    images = images.take(tf.where(failure["failed"], tf.constant(0, tf.int64), -1))
    errors = tf.data.Dataset.from_tensors(failure).take(tf.cast(failure["failed"], tf.int64))
    return images.concatenate(errors.flat_map(lambda failure: _report(failure, config)))

  return checked.flat_map(expand)


def _with_previous(last, batch):
  """Adds to each numbered record the file and record of the one before it."""
  position, record = batch
  paths = tf.concat([[last["path"]], record["path"]], 0)
  indices = tf.concat([[last["index"]], record["index"]], 0)
  return ({"path": paths[-1],
           "index": indices[-1]}, (position, record, {"path": paths[:-1], "index": indices[:-1]}))


def _no_image(config):
  return (tf.zeros([config.image_size, config.image_size, 3], tf.float32), tf.constant(0, tf.int64))


_NO_FAILURE = {"failed": False, "gap": False, "header": "", "path": "", "index": -1, "problem": ""}


def _check_batch(state, batch, checking, no_records):
  """Scan step over decoded batches: (images, labels) without the markers, and a failure.

  state: next position, usable records in the last span between markers and in the current
  one. The failure is the first gap or shard problem (when `checking`) or two spans in a row
  without a usable record (they hold a whole pass, wherever the markers are).
  """
  expected, usable_before, usable = state
  position, end, problem, pixels, label = batch[:5]
  count = tf.size(position, out_type=tf.int64)
  # Positions increase, so none is missing if the first and last are as expected.
  complete = tf.equal(position[0], expected) & tf.equal(position[-1], expected + count - 1)
  clean = (complete | (not checking)) & ~tf.reduce_any(end)

  def examine():
    in_order = tf.equal(position, tf.concat([[expected], position[:-1] + 1], 0))
    no_problem = tf.equal(problem, "")
    bad = ~in_order | ~no_problem if checking else tf.zeros_like(end)
    # Usable records per span between markers; the first span goes on from the last batch.
    marker = end & no_problem
    span = tf.cumsum(tf.cast(marker, tf.int32), exclusive=True)
    spans = tf.size(position) + 1
    good = tf.math.unsorted_segment_sum(tf.cast(~end, tf.int64), span, spans)
    good += tf.one_hot(0, spans, on_value=usable, off_value=tf.constant(0, tf.int64))
    good_before = tf.concat([[usable_before], good[:-1]], 0)
    unusable = marker & tf.equal(tf.gather(good + good_before, span), 0)
    first = tf.argmax(tf.cast(bad | unusable, tf.int32))
    previous = batch[5] if checking else {
        "path": tf.fill([count], ""), "index": tf.fill([count], tf.constant(-1, tf.int64))
    }
    failure = {
        "failed": tf.reduce_any(bad | unusable), "gap": bad[first] & ~in_order[first],
        "header": tf.where(bad[first], _BAD_RECORD, no_records), "path": previous["path"][first],
        "index": previous["index"][first], "problem": problem[first]
    }
    markers = tf.reduce_sum(tf.cast(marker, tf.int32))
    return (tf.boolean_mask(pixels, ~end), tf.boolean_mask(label, ~end), good_before[markers],
            good[markers], failure)

  no_failure = {
      key: tf.constant(value, tf.int64 if key == "index" else None)
      for key, value in _NO_FAILURE.items()
  }
  pixels, label, usable_before, usable, failure = tf.cond(
      clean, lambda: (pixels, label, usable_before, usable + count, no_failure), examine)
  return (position[-1] + 1, usable_before, usable), (pixels, label, failure)


def _report(failure, config):
  """A dataset whose one element raises the failure's error, a missing record diagnosed."""
  where = tf.strings.join([failure["path"], ":", tf.strings.as_string(failure["index"]), ": "])
  record = tf.data.TFRecordDataset(failure["path"]).skip(failure["index"]).take(
      tf.cast(failure["gap"], tf.int64))
  diagnosed = _problems(record, config).map(lambda problem: where + problem)
  known = tf.data.Dataset.from_tensors(failure["problem"]).take(tf.cast(~failure["gap"], tf.int64))
  unknown = tf.data.Dataset.from_tensors(where + "cannot be read again")

  def fail(message):
    with tf.control_dependencies([
        tf.debugging.Assert(tf.constant(False), [failure["header"], message], summarize=1)
    ]):
      return _no_image(config)

  return diagnosed.concatenate(known).concatenate(unknown).take(1).map(fail)


def _check_label(label, config):
  """`label` (0-based) as int64; an op error unless it is in [0, num_classes)."""
  label = tf.cast(label, tf.int64)
  in_range = (label >= 0) & (label < config.num_classes)
  with tf.control_dependencies([
      tf.debugging.Assert(
          in_range, [f"ImageNet data: label outside [0, num_classes={config.num_classes}):", label])
  ]):
    return tf.identity(label)


def _problems(records, config):
  """What is wrong with each of `records` (serialized), as a dataset of texts.

  Each step that could fail an op runs alone in a small dataset that drops its error, so this
  works inside a pipeline that must stay checkpointable; it is slow, meant for bad records.
  """

  def fields(record):
    example = tf.io.parse_single_example(record, _ANY_COUNT_FEATURES)
    encoded, label = example["image/encoded"], example["image/class/label"]
    jpeg = tf.concat([encoded, [""]], 0)[0]
    value = tf.concat([label, [0]], 0)[0]
    shifted = value - config.label_offset
    size = tf.strings.length(jpeg)
    label_problem = tf.strings.join([
        "image/class/label is ",
        tf.strings.as_string(value), ": with label_offset=",
        str(config.label_offset), " that is class ",
        tf.strings.as_string(shifted), f", not in [0, num_classes={config.num_classes})"
    ])
    jpeg_problem = tf.strings.join([
        "image/encoded is not a JPEG: its ",
        tf.strings.as_string(size), " bytes start with ",
        _hex(jpeg, 4), " (a JPEG starts with ff d8)"
    ])
    problem = tf.where(
        tf.size(encoded) != 1, _count_problem("image/encoded", tf.size(encoded)),
        tf.where(
            tf.size(label) != 1, _count_problem("image/class/label", tf.size(label)),
            tf.where((shifted < 0) | (shifted >= config.num_classes), label_problem,
                     tf.where(
                         tf.equal(size, 0), "image/encoded is empty",
                         tf.where(tf.equal(tf.strings.substr(jpeg, 0, 2), b"\xff\xd8"), "",
                                  jpeg_problem)))))
    return problem, jpeg

  def decoding(problem, jpeg):
    known = tf.data.Dataset.from_tensors(problem).take(tf.cast(problem != "", tf.int64))
    corrupt = tf.strings.join([
        "image/encoded (",
        tf.strings.as_string(tf.strings.length(jpeg)),
        " bytes) is a corrupt or truncated JPEG: decoding it fails"
    ])
    decoded = _attempt(lambda data: _empty_after(tf.io.decode_jpeg(data, channels=3)), jpeg,
                       corrupt).take(tf.cast(problem == "", tf.int64))
    return known.concatenate(decoded)

  found = records.flat_map(lambda record: _attempt(fields, record,
                                                   (tf.constant(_NOT_EXAMPLE), tf.constant(b""))))
  return found.flat_map(decoding).map(lambda problem: tf.where(
      tf.equal(problem, ""), "no step fails when the record is read again (a transient read "
      "error?)", problem))


def _attempt(fn, value, fallback):
  """A dataset of fn(value), or of `fallback` if an op in fn fails."""
  attempt = tf.data.Dataset.from_tensors(value).map(fn).ignore_errors()
  return attempt.concatenate(tf.data.Dataset.from_tensors(fallback)).take(1)


def _empty_after(tensor):
  """An empty string computed from `tensor`, so that the ops making `tensor` run (a control
  dependency on a stateless op can be pruned away)."""
  return tf.strings.substr(tf.strings.as_string(tf.size(tensor)), 0, 0)


def _count_problem(name, count):
  return tf.where(tf.equal(count, 0), f"{name} is missing",
                  tf.strings.join([name, " has ",
                                   tf.strings.as_string(count), " values, not 1"]))


def _hex(data, n):
  """The first `n` bytes of `data` as hex digits, space-separated (e.g. "89 50 4e 47")."""
  codes = tf.cast(tf.io.decode_raw(tf.strings.substr(data, 0, n), tf.uint8), tf.int32)
  digits = tf.constant(list("0123456789abcdef"))
  return tf.strings.reduce_join(
      tf.strings.join([tf.gather(digits, codes // 16),
                       tf.gather(digits, codes % 16)]), separator=" ")


def list_shards(data_dir, split):
  """Sorted shard paths of `split` in `data_dir`; ValueError saying how to get data if none."""
  pattern = os.path.join(data_dir, f"{SPLIT_PREFIXES[split]}-*")
  if not tf.io.gfile.isdir(data_dir):
    raise ValueError(f"ImageNet data: data_dir '{data_dir}' does not exist (looked for shards "
                     f"matching '{pattern}'). {_HOW_TO_GET_DATA}")
  files = sorted(tf.io.gfile.glob(pattern))
  if not files:
    raise ValueError(f"ImageNet data: no {split} shards in data_dir '{data_dir}': nothing "
                     f"matches '{pattern}'. {_HOW_TO_GET_DATA}")
  return files


def usable_shards(data_dir, split):
  """(paths, sizes in bytes) of the non-empty shards of `split`.

  Empty shards are left out with a warning naming them (a converter may write a few when
  there are more shards than images); ValueError if all are empty.
  """
  files = list_shards(data_dir, split)
  with concurrent.futures.ThreadPoolExecutor(min(len(files), _STAT_THREADS)) as pool:
    sizes = list(pool.map(lambda path: tf.io.gfile.stat(path).length, files))
  empty = [path for path, size in zip(files, sizes) if size == 0]
  if len(empty) == len(files):
    raise ValueError(f"ImageNet data: all {len(files)} {split} shard(s) in data_dir "
                     f"'{data_dir}' are empty (0 bytes, no records), e.g. '{files[0]}'. "
                     f"{_HOW_TO_GET_DATA}")
  if empty:
    logging.warning("ImageNet data: skipping %d empty %s shard(s) (0 bytes, no records): %s%s",
                    len(empty), split, ", ".join(empty[:_MAX_NAMED]),
                    ", ..." if len(empty) > _MAX_NAMED else "")
  kept = [(path, size) for path, size in zip(files, sizes) if size]
  return [path for path, _ in kept], [size for _, size in kept]


def _tfrecord_records(config, split, num_pipelines, pipeline_id, training, seed):
  """(records, files): this input pipeline's part of the shards, as `_shard_records` dicts."""
  files, sizes = usable_shards(config.data_dir, split)
  shard_files = len(files) >= num_pipelines
  if shard_files:
    files, sizes = files[pipeline_id::num_pipelines], sizes[pipeline_id::num_pipelines]
  dataset = tf.data.Dataset.from_tensor_slices((files, tf.constant(sizes, tf.int64)))
  if training and shard_files:
    dataset = dataset.shuffle(len(files), seed=seed, reshuffle_each_iteration=True)
  mode = "skip" if config.skip_bad_records else "check"
  dataset = dataset.interleave(
      lambda path, size: _shard_records(path, size, mode),
      cycle_length=min(len(files), _MAX_CYCLE_LENGTH),
      block_length=1,
      num_parallel_calls=tf.data.AUTOTUNE,
      # Sharding examples needs the same order on every pipeline.
      deterministic=None if shard_files else True)
  if not shard_files:  # fewer shards than hosts: every host reads all, keeps its share
    dataset = dataset.shard(num_pipelines, pipeline_id)
  return dataset, files


def _shard_records(path, size, mode):
  """One shard's records as dicts of path, index, serialized, end (False) and problem ("").

  A failing length or CRC check (or read error) ends a TFRecordDataset with an error that does
  not name the file. Here it ends the shard quietly, and the bytes read are compared with the
  file's size at the end: if they differ, the shard broke there. mode "check" then adds an
  end element (end True) whose `problem` says so, "skip" prints it (the rest of the shard is
  lost), "count" always adds the end element (problem "" if the shard is whole).
  """
  records = tf.data.TFRecordDataset(path, buffer_size=_READ_BUFFER_BYTES)
  batches = tf.data.Dataset.zip(
      records.ignore_errors(log_warning=True).batch(_SHARD_BATCH),
      tf.data.Dataset.from_tensors(False).repeat())
  batches = batches.concatenate(
      tf.data.Dataset.from_tensors((tf.zeros([0], tf.string), tf.constant(True))))

  def number(state, batch):
    index, offset = state
    serialized, end = batch
    sizes = tf.cast(tf.strings.length(serialized), tf.int64) + _RECORD_FRAMING_BYTES
    count = tf.size(serialized, out_type=tf.int64)

    def in_shard():
      return {
          "path": tf.fill([count], path), "index": index + tf.range(count),
          "serialized": serialized, "end": tf.zeros([count], tf.bool), "problem": tf.fill([count],
                                                                                          "")
      }

    def shard_end():
      broken = tf.not_equal(offset, size)
      problem = tf.strings.join([
          path, ":",
          tf.strings.as_string(index), ": TFRecord framing breaks at byte ",
          tf.strings.as_string(offset), " of ",
          tf.strings.as_string(size), " (a length or CRC "
          "check or the read failed, see the warning before): the shard is corrupt or "
          "truncated, and none of its records from here on can be read"
      ])
      if mode == "skip":
        printed = tf.cond(
            broken, lambda: tf.print("ImageNet data: skipping the rest of a shard:", problem,
                                     output_stream=sys.stderr), tf.no_op)
        with tf.control_dependencies([printed]):
          rows = tf.constant(0, tf.int64)
      else:
        rows = tf.cast(broken | (mode == "count"), tf.int64)
      return {
          "path": tf.fill([rows], path), "index": tf.fill([rows],
                                                          index), "serialized": tf.fill([rows], ""),
          "end": tf.fill([rows], True), "problem": tf.fill([rows], tf.where(broken, problem, ""))
      }

    return (index + count, offset + tf.reduce_sum(sizes)), tf.cond(end, shard_end, in_shard)

  return batches.scan((tf.constant(0, tf.int64), tf.constant(0, tf.int64)), number).unbatch()


def count_bad_records(config, split, max_logged=10):
  """Number of bad records in `split` (one full scan, eager): those skip_bad_records drops.

  Each record is parsed and fully decoded (training decodes only a crop, so it may drop fewer
  records). The first `max_logged` bad ones are logged with file, record and problem. A shard
  whose framing breaks counts as one bad record: the records after the break cannot be found.
  """
  if config.source == "tfds":
    raise ValueError("ImageNet data: count_bad_records reads TFRecord shards; TFDS checks its "
                     "own data.")
  files, sizes = usable_shards(config.data_dir, split)

  def strict(record):

    def decode():
      example = tf.io.parse_single_example(record["serialized"], _FEATURES)
      label = _check_label(example["image/class/label"] - config.label_offset, config)
      pixels = tf.io.decode_jpeg(example["image/encoded"], channels=3)
      return tf.strings.join([_empty_after(pixels), _empty_after(label)])

    return tf.strings.join([
        tf.cond(record["end"], lambda: tf.constant(""), decode), record["problem"]
    ]), record

  def events(path, size):
    """(path, first missing record, how many, problem) of the shard's bad records."""

    def gaps(expected, problem_and_record):
      problem, record = problem_and_record
      return record["index"] + 1, (record["path"], expected, record["index"] - expected, problem)

    checked = _shard_records(path, size, "count").map(strict).ignore_errors()
    return checked.scan(
        tf.constant(0, tf.int64),
        gaps).filter(lambda path, first, missing, problem: (missing > 0) | (problem != ""))

  found = tf.data.Dataset.from_tensor_slices((files, tf.constant(sizes, tf.int64))).interleave(
      events, cycle_length=min(len(files), _MAX_CYCLE_LENGTH), num_parallel_calls=tf.data.AUTOTUNE,
      deterministic=True)
  count = 0
  for path, first, missing, problem in found.as_numpy_iterator():
    path = path.decode()
    quota = max(0, max_logged - count)
    messages = [
        f"{path}:{index}: {_read_again(path, index, config)}"
        for index in range(first, first + min(missing, quota))
    ]
    if problem:
      messages.append(problem.decode())
    for message in messages[:quota]:
      logging.warning("ImageNet data: skipping %s", message)
    count += missing + bool(problem)
  return count


def _read_again(path, index, config):
  """The problem of record `index` of `path`, read on its own."""
  record = tf.data.TFRecordDataset(path).skip(index).take(1)
  return next(iter(_problems(record, config))).numpy().decode()


def _tfds_records(config, split, input_context, training, seed):
  """(encoded JPEG, 0-based label) records of TFDS `imagenet2012`, prepared if possible."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  manual_dir = os.path.join(config.data_dir, "downloads", "manual")
  builder = tfds.builder("imagenet2012", data_dir=config.data_dir)
  if not tf.io.gfile.exists(os.path.join(builder.data_dir, "dataset_info.json")):
    tars = ("ILSVRC2012_img_train.tar", "ILSVRC2012_img_val.tar")
    if not all(tf.io.gfile.exists(os.path.join(manual_dir, tar)) for tar in tars):
      raise ValueError(
          f"ImageNet data: TFDS imagenet2012 is not prepared under data_dir "
          f"'{config.data_dir}' (no '{builder.data_dir}'), and its manual download dir "
          f"'{manual_dir}' lacks {' and '.join(tars)}. Download them from image-net.org into "
          f"'{manual_dir}', or run `tfds build imagenet2012 --data_dir={config.data_dir} "
          f"--manual_dir=<dir of the tars>`. {_HOW_TO_GET_DATA}")
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
        manual_dir=manual_dir))
  read_config = tfds.ReadConfig(input_context=input_context, shuffle_seed=seed,
                                interleave_cycle_length=_MAX_CYCLE_LENGTH)
  dataset = builder.as_dataset(split=split, shuffle_files=training, read_config=read_config,
                               decoders={"image": tfds.decode.SkipDecoding()})
  return dataset.map(lambda ex: (ex["image"], _check_label(ex["label"], config)),
                     num_parallel_calls=tf.data.AUTOTUNE)


def _normalize(image):
  image = tf.cast(image, tf.float32)
  return (image - tf.constant(MEAN_RGB)) / tf.constant(STDDEV_RGB)


def _resize(image, image_size):
  image = tf.image.resize(image, [image_size, image_size], method="bilinear")
  return tf.ensure_shape(image, [image_size, image_size, 3])


def _train_image(encoded, image_size, seed):
  """Random-resized crop (decoding only the crop) and random horizontal flip."""
  crop_seed, flip_seed = tf.unstack(tf.random.experimental.stateless_split(seed, num=2))
  shape = tf.image.extract_jpeg_shape(encoded)
  begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
      shape, bounding_boxes=tf.constant([[[0.0, 0.0, 1.0, 1.0]]]), seed=crop_seed,
      min_object_covered=0.1, aspect_ratio_range=CROP_ASPECT_RATIO_RANGE,
      area_range=CROP_AREA_RANGE, max_attempts=10, use_image_if_no_bounding_boxes=True)
  offset_y, offset_x, _ = tf.unstack(begin)
  height, width, _ = tf.unstack(size)
  window = tf.stack([offset_y, offset_x, height, width])
  image = tf.io.decode_and_crop_jpeg(encoded, window, channels=3)
  image = _resize(image, image_size)
  image = tf.image.stateless_random_flip_left_right(image, seed=flip_seed)
  return _normalize(image)


def center_crop_window(height, width):
  """[offset_y, offset_x, size, size] of the evaluation crop of a height x width image."""
  size = tf.maximum(
      tf.cast(EVAL_CROP_FRACTION * tf.cast(tf.minimum(height, width), tf.float32), tf.int32), 1)
  return tf.stack([(height - size + 1) // 2, (width - size + 1) // 2, size, size])


def _eval_image(encoded, image_size):
  """Center crop of EVAL_CROP_FRACTION of the shorter side, resized to image_size."""
  shape = tf.image.extract_jpeg_shape(encoded)
  image = tf.io.decode_and_crop_jpeg(encoded, center_crop_window(shape[0], shape[1]), channels=3)
  return _normalize(_resize(image, image_size))
