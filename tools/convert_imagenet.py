"""Converts a folder of class sub-folders of JPEGs into ImageNet TFRecord shards.

    ./bazelw run //tools:convert_imagenet -- --input_dir=ILSVRC/train --output_dir=/data/imagenet \
        --split=train
    ./bazelw run //tools:convert_imagenet -- --input_dir=ILSVRC/val --output_dir=/data/imagenet \
        --split=validation

The input is the ILSVRC layout, `input_dir/<class_name>/*.JPEG` (sort the flat ILSVRC
validation folder into class folders first, e.g. with the usual valprep.sh). The output is
what `trainers/image_classification/data.py` reads: shards `<split>-00000-of-0000N` of
`tf.train.Example`s with `image/encoded` (JPEG) and `image/class/label` (1-based, in sorted
class-name order), plus `labels.txt` (one class name per line, line i is label i). Files are
shuffled across shards with a fixed seed, so every shard mixes the classes. Without
--num_shards a split gets the usual converters' count, 1024 train or 128 validation shards,
but never more shards than images (a shard per image for a small folder), so no shard is
empty. Images that are not RGB JPEGs (PNGs named .JPEG, CMYK or grayscale JPEGs) are
re-encoded as RGB JPEG.
"""

import os
import random
import sys
import time

from absl import app
from absl import flags
import tensorflow as tf

SPLITS = ("train", "validation")
DEFAULT_SHARDS = {"train": 1024, "validation": 128}  # as the usual ImageNet converters
IMAGE_EXTENSIONS = (".jpeg", ".jpg", ".png")
_SHUFFLE_SEED = 12345
_JPEG_QUALITY = 95

_INPUT_DIR = flags.DEFINE_string("input_dir", None,
                                 "Folder of class sub-folders of images (input_dir/<class>/*).")
_OUTPUT_DIR = flags.DEFINE_string("output_dir", None,
                                  "Where to write the shards and labels.txt (local or gs://).")
_SPLIT = flags.DEFINE_string("split", None, f"Shard name prefix: one of {', '.join(SPLITS)}.")
_NUM_SHARDS = flags.DEFINE_integer(
    "num_shards", None, "Number of output shards (1 to the number of images); default: "
    f"{DEFAULT_SHARDS['train']} for train, {DEFAULT_SHARDS['validation']} for validation, at "
    "most one per image.")
_IMAGE_SIZE = flags.DEFINE_integer(
    "image_size", None, "Resize so the shorter side is this many pixels (keeping the aspect "
    "ratio); default: keep the original size.")


def _fail(flag, value, expected):
  raise ValueError(f"--{flag}={value!r}: {expected}")


def list_images(input_dir):
  """(class names sorted, [(path, 1-based label, class name)]); ValueError naming --input_dir."""
  if not input_dir:
    _fail("input_dir", input_dir, "required: a folder of class sub-folders of JPEGs.")
  if not tf.io.gfile.isdir(input_dir):
    _fail("input_dir", input_dir, "no such directory.")
  classes = sorted(
      name.rstrip("/") for name in tf.io.gfile.listdir(input_dir)
      if tf.io.gfile.isdir(os.path.join(input_dir, name)))
  if not classes:
    _fail("input_dir", input_dir, "has no class sub-folders; expected input_dir/<class>/*.JPEG.")
  images = []
  for label, name in enumerate(classes, start=1):
    files = sorted(f for f in tf.io.gfile.listdir(os.path.join(input_dir, name))
                   if f.lower().endswith(IMAGE_EXTENSIONS))
    if not files:
      _fail("input_dir", input_dir, f"class folder '{name}' has no images "
            f"({', '.join(IMAGE_EXTENSIONS)}).")
    images.extend((os.path.join(input_dir, name, f), label, name) for f in files)
  return classes, images


def _encode(raw, image_size):
  """(RGB JPEG bytes, height, width), re-encoding only when needed.

  A JPEG is kept as it is only if it stores 3 components: TensorFlow decodes CMYK JPEGs to 3
  channels too, but other readers may not, and the record says `image/channels` 3.
  """
  is_rgb_jpeg = (raw[:3] == b"\xff\xd8\xff" and
                 int(tf.image.extract_jpeg_shape(raw, output_type=tf.int64)[2]) == 3)
  image = tf.io.decode_image(raw, channels=3, expand_animations=False)
  needs_resize = image_size and min(image.shape[0], image.shape[1]) != image_size
  if is_rgb_jpeg and not needs_resize:
    return raw, image.shape[0], image.shape[1]
  if needs_resize:
    height, width = image.shape[0], image.shape[1]
    scale = image_size / min(height, width)
    size = [max(round(height * scale), image_size), max(round(width * scale), image_size)]
    image = tf.image.resize(image, size, method="bilinear", antialias=True)
    image = tf.cast(tf.clip_by_value(tf.round(image), 0, 255), tf.uint8)
  return tf.io.encode_jpeg(image, quality=_JPEG_QUALITY).numpy(), image.shape[0], image.shape[1]


def _example(jpeg, height, width, label, name, filename):

  def bytes_feature(value):
    return tf.train.Feature(bytes_list=tf.train.BytesList(value=[value]))

  def int_feature(value):
    return tf.train.Feature(int64_list=tf.train.Int64List(value=[value]))

  return tf.train.Example(features=tf.train.Features(
      feature={
          "image/encoded": bytes_feature(jpeg),
          "image/format": bytes_feature(b"JPEG"),
          "image/class/label": int_feature(label),
          "image/class/synset": bytes_feature(name.encode()),
          "image/filename": bytes_feature(filename.encode()),
          "image/height": int_feature(height),
          "image/width": int_feature(width),
          "image/channels": int_feature(3),
      })).SerializeToString()


class _Progress:
  """A carriage-return progress line: count/total, rate and ETA, at most 5 updates/s."""

  def __init__(self, total, label, stream=None):
    self._total, self._label, self._stream = total, label, stream or sys.stderr
    self._start = self._last = time.time()

  def update(self, done):
    now = time.time()
    if done < self._total and now - self._last < 0.2:
      return
    self._last = now
    rate = done / max(now - self._start, 1e-9)
    eta = (self._total - done) / rate if rate > 0 else 0
    self._stream.write(f"\r{self._label}: {done}/{self._total} images "
                       f"({100 * done / self._total:.0f}%), {rate:.0f} images/s, "
                       f"ETA {int(eta) // 60:d}:{int(eta) % 60:02d}")
    if done == self._total:
      self._stream.write("\n")
    self._stream.flush()


def default_num_shards(split, num_images):
  """The usual converters' shard count of `split`, capped so that no shard is empty."""
  return min(DEFAULT_SHARDS[split], num_images)


def convert(input_dir, output_dir, split, num_shards=None, image_size=None, progress=True):
  """Writes the shards and labels.txt; returns the list of shard paths.

  num_shards None: `default_num_shards`. Raises ValueError naming the flag when an input is
  invalid, before writing anything.
  """
  if split not in SPLITS:
    _fail("split", split, f"must be one of {', '.join(SPLITS)}.")
  if num_shards is not None and (isinstance(num_shards, bool) or not isinstance(num_shards, int) or
                                 num_shards < 1):
    _fail("num_shards", num_shards, "must be an integer >= 1, or unset for the default.")
  if image_size is not None and (isinstance(image_size, bool) or not isinstance(image_size, int) or
                                 image_size < 1):
    _fail("image_size", image_size, "must be an integer >= 1, or unset to keep the size.")
  if not output_dir:
    _fail("output_dir", output_dir, "required: where to write the shards.")
  classes, images = list_images(input_dir)
  if num_shards is None:
    num_shards = default_num_shards(split, len(images))
  elif num_shards > len(images):
    _fail("num_shards", num_shards, f"more shards than the {len(images)} images in "
          f"'{input_dir}'.")
  labels_path = os.path.join(output_dir, "labels.txt")
  labels_text = "".join(name + "\n" for name in classes)
  if tf.io.gfile.exists(labels_path):
    with tf.io.gfile.GFile(labels_path) as f:
      if f.read() != labels_text:
        _fail(
            "output_dir", output_dir, f"its labels.txt lists other classes than the "
            f"{len(classes)} folders of '{input_dir}'; the splits of one data set must have "
            "the same classes (use another --output_dir).")

  tf.io.gfile.makedirs(output_dir)
  random.Random(_SHUFFLE_SEED).shuffle(images)
  bounds = [round(i * len(images) / num_shards) for i in range(num_shards + 1)]
  bar = _Progress(len(images), split) if progress else None
  paths, done = [], 0
  for shard in range(num_shards):
    name = f"{split}-{shard:05d}-of-{num_shards:05d}"
    final, staging = os.path.join(output_dir, name), os.path.join(output_dir, f".tmp-{name}")
    with tf.io.TFRecordWriter(staging) as writer:
      for path, label, class_name in images[bounds[shard]:bounds[shard + 1]]:
        with tf.io.gfile.GFile(path, "rb") as f:
          raw = f.read()
        try:
          jpeg, height, width = _encode(raw, image_size)
        except tf.errors.InvalidArgumentError as e:
          raise ValueError(f"--input_dir: cannot decode image '{path}': {e.message}") from e
        writer.write(_example(jpeg, height, width, label, class_name, os.path.basename(path)))
        done += 1
        if bar:
          bar.update(done)
    tf.io.gfile.rename(staging, final, overwrite=True)  # a partial shard never matches split-*
    paths.append(final)
  with tf.io.gfile.GFile(labels_path, "w") as f:
    f.write(labels_text)
  return paths


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
  try:
    paths = convert(_INPUT_DIR.value, _OUTPUT_DIR.value, _SPLIT.value, _NUM_SHARDS.value,
                    _IMAGE_SIZE.value)
  except ValueError as e:
    raise app.UsageError(str(e)) from e
  print(f"Wrote {len(paths)} {_SPLIT.value} shards and labels.txt to {_OUTPUT_DIR.value}")


if __name__ == "__main__":
  app.run(main)
