"""Criteo click log input pipeline: tab-separated text files, plain or gzip, with tf.data.

Each line is `label \\t I1 .. I13 \\t C1 .. C26`: the label 0 or 1, 13 integer features and 26
categorical features as hex strings (8 hex digits in Criteo's releases); any feature may be
empty, meaning missing. Files ending in `.gz` are read as gzip (one whose first bytes are not
gzip's is refused up front, by name; a truncated one usually ends in a cut line, reported as
malformed). Lines may end in CRLF; the last needs no newline. The pipeline yields batches of
({"dense": float32 [B, 13], "sparse": int64 [B, 26]}, label float32 [B]).

Dense features are log(1 + max(x, 0)), as in DLRM; missing is 0.
Categorical ids: the hex string is converted to an int64 (up to 16 hex digits; 16 digits may
wrap around, deterministically) and mapped to `1 + value mod (table_size - 1)`; id 0 is
reserved for missing. Criteo's hex strings are already hashes, so the modulo spreads them
evenly, and small ids (as written by `generated_clicks.py`) keep their identity when the table
is larger than the vocabulary.

Malformed lines (wrong field count, a label other than 0/1, a non-integer in an integer column
or a non-hex category) stop the pipeline with an InvalidArgumentError naming the file, the
1-based line number and the problem. With `skip_bad_records=True` they are dropped instead;
`count_bad_records(config)` scans the files once and returns how many lines are dropped (the
pipeline itself keeps no counter, which would be state in tf.data and would not survive
checkpoints or several workers).
"""

import dataclasses
from typing import Optional, Tuple

from absl import logging
import tensorflow as tf

from trainers.ctr.criteo_format import NUM_DENSE
from trainers.ctr.criteo_format import NUM_FIELDS
from trainers.ctr.criteo_format import NUM_SPARSE

_PARSE_BATCH = 1024  # lines validated and parsed per vectorized call
_MAX_CYCLE_LENGTH = 16
_READ_BUFFER_BYTES = 8 << 20
_HEX_DIGITS = 16
_INT_PATTERN = r"-?[0-9]{1,18}"  # fits int64 exactly; larger counts are not Criteo's
_HEX_PATTERN = r"[0-9a-fA-F]{1,16}"
_GZIP_MAGIC = b"\x1f\x8b"


@dataclasses.dataclass(frozen=True)
class CriteoConfig:
  """What to read and how. Validated on construction.

  files: paths or glob patterns (tf.io.gfile.glob, so gs:// works); `.gz` files are gzip.
  table_sizes: embedding table rows of C1..C26; ids land in [0, table_size), 0 = missing.
  batch_size: global batch size; per replica with an input context.
  shuffle: shuffle file order and examples (buffer `shuffle_buffer`), seeded by `seed`.
  skip_bad_records: drop malformed lines instead of failing on the first.
  """

  files: Tuple[str, ...]
  table_sizes: Tuple[int, ...]
  batch_size: int
  skip_bad_records: bool = False
  shuffle: bool = False
  seed: Optional[int] = None
  shuffle_buffer: int = 100_000

  def __post_init__(self):
    files = (self.files,) if isinstance(self.files, str) else tuple(self.files)
    if not files or not all(isinstance(f, str) and f for f in files):
      raise ValueError(f"CriteoConfig: `files` must be non-empty paths or glob patterns; got "
                       f"{self.files!r}.")
    object.__setattr__(self, "files", files)
    sizes = tuple(self.table_sizes)
    if len(sizes) != NUM_SPARSE or not all(
        isinstance(s, int) and not isinstance(s, bool) and s >= 2 for s in sizes):
      raise ValueError(f"CriteoConfig: `table_sizes` must be {NUM_SPARSE} integers >= 2 (row 0 "
                       f"is reserved for missing values); got {self.table_sizes!r}.")
    object.__setattr__(self, "table_sizes", sizes)
    for name in ("batch_size", "shuffle_buffer"):
      value = getattr(self, name)
      if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"CriteoConfig: `{name}` must be an integer >= 1; got {value!r}.")


def list_files(config):
  """Sorted, de-duplicated paths matching `config.files`; ValueError if a pattern matches none
  or a `.gz` file is not gzip."""
  paths = set()
  for pattern in config.files:
    matches = tf.io.gfile.glob(pattern)
    if not matches:
      raise ValueError(f"Criteo data: no file matches '{pattern}'.")
    paths.update(matches)
  for path in sorted(paths):
    _check_gzip(path)
  return sorted(paths)


def _check_gzip(path):
  """ValueError naming a `.gz` file that does not start as gzip does.

  Reading it would fail mid-run with an inflate error that names no file.
  """
  if not path.endswith(".gz"):
    return
  with tf.io.gfile.GFile(path, "rb") as f:
    start = f.read(len(_GZIP_MAGIC))
  if start != _GZIP_MAGIC:
    shown = " ".join(f"{byte:02x}" for byte in start) or "nothing (empty file)"
    raise ValueError(f"Criteo data: '{path}' ends in .gz but is not gzip: it starts with "
                     f"{shown}, not 1f 8b. Decompress it, or rename it without .gz if it is "
                     "plain text.")


def dataset(config, input_context=None):
  """One pass over the files as batches of ({"dense", "sparse"}, label); repeat to train longer.

  The batch is per replica with `input_context` (a `tf.distribute.InputContext`), else
  `config.batch_size`; the remainder is dropped so every batch has a static shape. With several
  input pipelines each reads its own subset of the files (or of the lines, when there are
  fewer files than pipelines).
  """
  num_pipelines = input_context.num_input_pipelines if input_context else 1
  pipeline_id = input_context.input_pipeline_id if input_context else 0
  batch_size = (input_context.get_per_replica_batch_size(config.batch_size)
                if input_context else config.batch_size)
  files = list_files(config)
  shard_files = len(files) >= num_pipelines
  if shard_files:
    files = files[pipeline_id::num_pipelines]
  lines = _numbered_lines(files, shuffle=config.shuffle and shard_files, seed=config.seed)
  if not shard_files:  # every pipeline reads all files in the same order, keeps its share
    lines = lines.shard(num_pipelines, pipeline_id)
  examples = _examples(lines, config).unbatch()
  if config.shuffle:
    examples = examples.shuffle(config.shuffle_buffer, seed=config.seed,
                                reshuffle_each_iteration=True)
  batches = examples.batch(batch_size, drop_remainder=True)
  batches = batches.map(lambda dense, sparse, label: ({"dense": dense, "sparse": sparse}, label))
  return batches.prefetch(tf.data.AUTOTUNE)


def count_bad_records(config, max_logged=10):
  """Number of malformed lines in all of `config.files` (one full scan, eager).

  The first `max_logged` of them are logged with file, line and problem.
  """
  count = 0
  for error, *_ in _parsed(_numbered_lines(list_files(config), shuffle=False, seed=None), config):
    bad = [e.decode("utf-8", "replace") for e in error.numpy() if e]
    for message in bad[:max(0, max_logged - count)]:
      logging.warning("Criteo data: skipping %s", message)
    count += len(bad)
  return count


def _numbered_lines(files, shuffle, seed):
  """(file name, 1-based line number, line) of the files, interleaved across files."""
  paths = tf.data.Dataset.from_tensor_slices(files)
  if shuffle:
    paths = paths.shuffle(len(files), seed=seed, reshuffle_each_iteration=True)

  def read(path):
    compression = tf.where(tf.strings.regex_full_match(path, r".*\.gz"), "GZIP", "")
    text = tf.data.TextLineDataset(path, compression_type=compression,
                                   buffer_size=_READ_BUFFER_BYTES)
    return text.enumerate(start=1).map(lambda number, line: (path, number, line))

  return paths.interleave(read, cycle_length=min(len(files),
                                                 _MAX_CYCLE_LENGTH), block_length=_PARSE_BATCH,
                          num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


def _parsed(lines, config):
  """Batches of (error, label, dense, sparse) of numbered lines, as `parse_lines`."""
  table_sizes = tf.constant(config.table_sizes, tf.int64)
  return lines.batch(_PARSE_BATCH).map(
      lambda paths, numbers, text: parse_lines(paths, numbers, text, table_sizes),
      num_parallel_calls=tf.data.AUTOTUNE)


def _examples(lines, config):
  """Batches of (dense, sparse, label) of the good lines; fails on a bad one unless skipping.

  Checked per parse batch rather than per line: per-element tf.data stages cost more than the
  parsing.
  """

  def check(error, label, dense, sparse):
    good = tf.equal(error, "")
    if config.skip_bad_records:
      return (tf.boolean_mask(dense, good), tf.boolean_mask(sparse, good),
              tf.boolean_mask(label, good))
    first_bad = tf.gather(error, tf.argmin(tf.cast(good, tf.int32)))
    with tf.control_dependencies([
        tf.debugging.Assert(tf.reduce_all(good), ["Criteo data: malformed line", first_bad])
    ]):
      return tf.identity(dense), tf.identity(sparse), tf.identity(label)

  return _parsed(lines, config).map(check, num_parallel_calls=tf.data.AUTOTUNE)


def parse_lines(paths, numbers, lines, table_sizes):
  """Parses a vector of lines, vectorized; returns (error, label, dense, sparse).

  error: string [N], "" for a good line, else "<file>:<line>: <problem>".
  label float32 [N], dense float32 [N, 13], sparse int64 [N, 26]; zeros on bad lines.
  """
  fields = tf.strings.split(lines, "\t")
  num_fields = fields.row_lengths()
  fields = fields.to_tensor(default_value="", shape=[None, NUM_FIELDS])
  label_text, int_text, hex_text = (fields[:, 0], fields[:, 1:1 + NUM_DENSE],
                                    fields[:, 1 + NUM_DENSE:])
  label_ok = tf.strings.regex_full_match(label_text, "[01]")
  int_present = tf.not_equal(int_text, "")
  int_ok = tf.strings.regex_full_match(int_text, _INT_PATTERN) | ~int_present
  hex_present = tf.not_equal(hex_text, "")
  hex_ok = tf.strings.regex_full_match(hex_text, _HEX_PATTERN) | ~hex_present

  # The first problem of each line, in column order.
  def quoted(text):
    # Backticks: tf.debugging.Assert escapes quotes in the message it raises.
    return tf.strings.join(["`", tf.strings.substr(text, 0, 40), "`"])

  def first_bad(ok, text, prefix, what):
    column = tf.argmin(tf.cast(ok, tf.int32), axis=1, output_type=tf.int32)
    value = tf.gather(text, column, batch_dims=1)
    return tf.strings.join([
        prefix, tf.strings.as_string(column + 1), " is not ", what, ": ",
        quoted(value)
    ])

  problem = tf.where(
      tf.not_equal(num_fields, NUM_FIELDS),
      tf.strings.join([
          f"expected {NUM_FIELDS} tab-separated fields (label, {NUM_DENSE} "
          f"integer and {NUM_SPARSE} categorical features), got ",
          tf.strings.as_string(num_fields)
      ]),
      tf.where(
          ~label_ok, tf.strings.join(["label is not 0 or 1: ",
                                      quoted(label_text)]),
          tf.where(
              ~tf.reduce_all(int_ok, axis=1),
              first_bad(int_ok, int_text, "integer feature I", "an integer"),
              tf.where(~tf.reduce_all(hex_ok, axis=1),
                       first_bad(hex_ok, hex_text, "categorical feature C", "a hex string"), ""))))
  good = tf.equal(problem, "")
  error = tf.where(good, "",
                   tf.strings.join([paths, ":",
                                    tf.strings.as_string(numbers), ": ", problem]))

  label = tf.where(good & tf.equal(label_text, "1"), 1.0, 0.0)
  use_int = int_present & int_ok & good[:, None]
  values = tf.strings.to_number(tf.where(use_int, int_text, "0"), tf.float64)
  dense = tf.cast(tf.math.log1p(tf.maximum(values, 0.0)), tf.float32)
  use_hex = hex_present & hex_ok & good[:, None]
  hex_value = _hex_to_int64(tf.where(use_hex, hex_text, "0"))
  sparse = tf.where(use_hex, 1 + tf.math.floormod(hex_value, table_sizes - 1),
                    tf.zeros_like(hex_value))
  return error, label, dense, sparse


def _hex_to_int64(text):
  """int64 values of strings of 1 to 16 hex digits (16 digits wrap around past 2**63)."""
  padded = tf.strings.substr(tf.strings.join(["0" * _HEX_DIGITS, text]), -_HEX_DIGITS, _HEX_DIGITS)
  codes = tf.cast(tf.io.decode_raw(padded, tf.uint8), tf.int64)  # [..., 16] ASCII codes
  lower = tf.bitwise.bitwise_or(codes, 32)  # 'A'-'F' -> 'a'-'f'; digits unchanged
  digits = tf.where(codes <= ord("9"), codes - ord("0"), lower - ord("a") + 10)
  shifts = tf.constant([4 * (_HEX_DIGITS - 1 - i) for i in range(_HEX_DIGITS)], tf.int64)
  return tf.reduce_sum(tf.bitwise.left_shift(digits, shifts), axis=-1)
