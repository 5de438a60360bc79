"""ImageNet input pipeline: JPEG TFRecord shards (local or gs://) or TFDS `imagenet2012`.

Shards follow the layout of the usual ImageNet-to-TFRecord converters (and of
`tools/convert_imagenet.py` and `generated_data.py`): files `train-*` and `validation-*` in
one directory, each record a `tf.train.Example` with `image/encoded` (JPEG bytes) and
`image/class/label` (int64, 1-based). Both sources share one decode and augmentation path:
random-resized crop and flip for training, center crop for evaluation, then ImageNet
mean/std normalization.
"""

import dataclasses
import os
import random
from typing import Optional

import tensorflow as tf

SOURCES = ("tfrecord", "tfds", "generated")  # generated data is read as tfrecord shards
SPLIT_PREFIXES = {"train": "train", "validation": "validation"}
MEAN_RGB = (0.485 * 255, 0.456 * 255, 0.406 * 255)
STDDEV_RGB = (0.229 * 255, 0.224 * 255, 0.225 * 255)
EVAL_CROP_FRACTION = 0.875  # 224 of 256, the usual ResNet evaluation crop
CROP_AREA_RANGE = (0.08, 1.0)
CROP_ASPECT_RATIO_RANGE = (3 / 4, 4 / 3)
_MAX_CYCLE_LENGTH = 16
_READ_BUFFER_BYTES = 8 << 20
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
  if config.source == "tfds":
    records = _tfds_records(config, split, input_context, training, seed)
  else:
    records = _tfrecord_records(config, split, num_pipelines, pipeline_id, training, seed)

  if training:
    records = records.shuffle(config.shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
    records = records.repeat()
    # Stateless augmentation keyed by (seed, element index): reproducible with a seed, and the
    # iterator stays checkpointable (no stateful random ops in the map).
    base_seed = seed if seed is not None else random.randrange(2**31)
    records = records.enumerate()

    def preprocess(index, record):
      encoded, label = record
      element_seed = tf.stack([tf.constant(base_seed, tf.int64),
                               index * num_pipelines + pipeline_id])
      return _train_image(encoded, config.image_size, element_seed), label

    dataset = records.map(preprocess, num_parallel_calls=tf.data.AUTOTUNE)
  else:
    dataset = records.map(lambda encoded, label: (_eval_image(encoded, config.image_size),
                                                  label),
                          num_parallel_calls=tf.data.AUTOTUNE)
  dataset = dataset.batch(batch_size, drop_remainder=True)
  dataset = dataset.prefetch(tf.data.AUTOTUNE)
  options = tf.data.Options()
  options.deterministic = config.deterministic
  return dataset.with_options(options)


def _check_label(label, config):
  label = tf.cast(label, tf.int64)
  tf.debugging.assert_non_negative(
      label, message=f"ImageNet data: a label is < 0 after label_offset={config.label_offset}")
  tf.debugging.assert_less(
      label, tf.constant(config.num_classes, tf.int64),
      message=f"ImageNet data: a label is >= num_classes={config.num_classes} after "
              f"label_offset={config.label_offset}")
  return label


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


def _tfrecord_records(config, split, num_pipelines, pipeline_id, training, seed):
  """(encoded JPEG, 0-based label) records of this input pipeline's part of the shards."""
  files = list_shards(config.data_dir, split)
  shard_files = len(files) >= num_pipelines
  if shard_files:
    files = files[pipeline_id::num_pipelines]
  dataset = tf.data.Dataset.from_tensor_slices(files)
  if training and shard_files:
    dataset = dataset.shuffle(len(files), seed=seed, reshuffle_each_iteration=True)
  dataset = dataset.interleave(
      lambda path: tf.data.TFRecordDataset(path, buffer_size=_READ_BUFFER_BYTES),
      cycle_length=min(len(files), _MAX_CYCLE_LENGTH), block_length=1,
      num_parallel_calls=tf.data.AUTOTUNE,
      # Sharding examples needs the same order on every pipeline.
      deterministic=None if shard_files else True)
  if not shard_files:  # fewer shards than hosts: every host reads all, keeps its share
    dataset = dataset.shard(num_pipelines, pipeline_id)
  features = {
      "image/encoded": tf.io.FixedLenFeature([], tf.string),
      "image/class/label": tf.io.FixedLenFeature([], tf.int64),
  }

  def parse(serialized):
    example = tf.io.parse_single_example(serialized, features)
    label = example["image/class/label"] - config.label_offset
    return example["image/encoded"], _check_label(label, config)

  return dataset.map(parse, num_parallel_calls=tf.data.AUTOTUNE)


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
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=manual_dir))
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
  crop_seed, flip_seed = tf.unstack(
      tf.random.experimental.stateless_split(seed, num=2))
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
  size = tf.maximum(tf.cast(EVAL_CROP_FRACTION * tf.cast(tf.minimum(height, width),
                                                         tf.float32), tf.int32), 1)
  return tf.stack([(height - size + 1) // 2, (width - size + 1) // 2, size, size])


def _eval_image(encoded, image_size):
  """Center crop of EVAL_CROP_FRACTION of the shorter side, resized to image_size."""
  shape = tf.image.extract_jpeg_shape(encoded)
  image = tf.io.decode_and_crop_jpeg(encoded, center_crop_window(shape[0], shape[1]),
                                     channels=3)
  return _normalize(_resize(image, image_size))
