"""A small built-in ImageNet-format data set, so the trainer runs with no download.

Each class is a shape and a color (and, past 64 classes, a background pattern), drawn at a
random position, size, rotation and color jitter over a noisy background of random color.
The class really shows in the pixels, so a small CNN learns it, but position, scale,
rotation, noise and the backgrounds keep it from being trivial. The images are written as JPEG
TFRecord shards in the layout of the usual ImageNet converters (`train-00000-of-00008`,
`validation-...`, features `image/encoded` and 1-based `image/class/label`), so the trainer
reads them with the same code path as real ImageNet.
"""

import os
import time

from absl import logging
import numpy as np
import tensorflow as tf

from trainers.common import generated_files

DEFAULT_TRAIN_EXAMPLES = 6000
DEFAULT_VALIDATION_EXAMPLES = 1000

SHAPES = ("disc", "square", "triangle", "ring", "cross", "striped_disc", "checkered_disc", "frame")
COLORS = {  # name: RGB
    "red": (220, 40, 40),
    "green": (40, 190, 60),
    "blue": (50, 70, 230),
    "yellow": (230, 220, 50),
    "magenta": (210, 50, 210),
    "cyan": (50, 210, 220),
    "orange": (240, 140, 30),
    "white": (240, 240, 240),
}
BACKGROUNDS = ("noise", "horizontal_bands", "vertical_bands", "checkerboard")
MAX_CLASSES = len(SHAPES) * len(COLORS) * len(BACKGROUNDS)

_TRAIN_SHARDS = 8
_VALIDATION_SHARDS = 2
_FILE_KEYS = ("train_shards", "validation_shards")
_FORMAT_VERSION = 1
_BATCH = 256  # images drawn per vectorized numpy call
_PALETTE = np.array(list(COLORS.values()), np.float32)


def class_attributes(label):
  """(shape, color, background) names of 0-based class `label`; distinct for distinct labels.

  The color index steps with the shape index's wrap-around (gcd(len(SHAPES)+1, len(COLORS))
  is 1), so classes that share a shape differ in color; the first 64 classes all use the
  plain noise background, which then carries no class information.
  """
  num_shapes, num_colors = len(SHAPES), len(COLORS)
  shape = label % num_shapes
  color = (label + label // num_shapes) % num_colors
  background = label // (num_shapes * num_colors)
  return SHAPES[shape], list(COLORS)[color], BACKGROUNDS[background]


def class_names(num_classes):
  return ["_".join(class_attributes(c)) for c in range(num_classes)]


def _attribute_indices(labels):
  num_shapes, num_colors = len(SHAPES), len(COLORS)
  shape = labels % num_shapes
  color = (labels + labels // num_shapes) % num_colors
  background = labels // (num_shapes * num_colors)
  return shape, color, background


def draw_images(labels, image_size, rng):
  """uint8 images [len(labels), image_size, image_size, 3] of the 0-based `labels`."""
  labels = np.asarray(labels, np.int64)
  n, size = len(labels), image_size
  shape, color, background = _attribute_indices(labels)
  grid = np.arange(size, dtype=np.float32) + 0.5
  y, x = grid[None, :, None], grid[None, None, :]

  # Background: a random color, a random linear gradient, a pattern and pixel noise.
  base = rng.uniform(0, 255, (n, 1, 1, 3)).astype(np.float32)
  slope = rng.uniform(-60, 60, (n, 2, 1, 1)).astype(np.float32) / size
  gradient = slope[:, 0] * (x - size / 2) + slope[:, 1] * (y - size / 2)
  period = rng.uniform(0.15, 0.3, (n, 1, 1)).astype(np.float32) * size
  bands_h = np.sin(2 * np.pi * y / period) > 0
  bands_v = np.sin(2 * np.pi * x / period) > 0
  pattern = np.select([
      background[:, None, None] == 1, background[:, None, None] == 2, background[:, None, None] == 3
  ], [bands_h, bands_v, bands_h ^ bands_v], default=False).astype(np.float32)
  image = base + (gradient + 50.0 * pattern)[..., None]

  # The object, in coordinates of its own frame scaled by its radius.
  cx = rng.uniform(0.3, 0.7, (n, 1, 1)).astype(np.float32) * size
  cy = rng.uniform(0.3, 0.7, (n, 1, 1)).astype(np.float32) * size
  radius = rng.uniform(0.17, 0.3, (n, 1, 1)).astype(np.float32) * size
  angle = rng.uniform(0, 2 * np.pi, (n, 1, 1)).astype(np.float32)
  cos, sin = np.cos(angle), np.sin(angle)
  u = ((x - cx) * cos + (y - cy) * sin) / radius
  v = (-(x - cx) * sin + (y - cy) * cos) / radius
  r = np.sqrt(u * u + v * v)
  au, av = np.abs(u), np.abs(v)
  box = np.maximum(au, av)
  disc = r < 1.0
  masks = [
      disc,
      box < 0.8,
      (v < 0.55) & (au < (v + 1.0) / np.sqrt(3.0)),
      disc & (r > 0.55),
      ((au < 0.3) & (av < 1.0)) | ((av < 0.3) & (au < 1.0)),
      disc & (np.sin(2.5 * np.pi * u) > 0),
      disc & (np.sin(2.2 * np.pi * u) * np.sin(2.2 * np.pi * v) > 0),
      (box < 0.85) & (box > 0.5),
  ]
  mask = np.choose(shape[:, None, None], masks)
  jitter = rng.normal(0, 18, (n, 1, 1, 3)).astype(np.float32)
  brightness = rng.uniform(0.75, 1.1, (n, 1, 1, 1)).astype(np.float32)
  fill = _PALETTE[color][:, None, None, :] * brightness + jitter
  image = np.where(mask[..., None], fill, image)
  image += rng.normal(0, 20, image.shape).astype(np.float32)
  return np.clip(image, 0, 255).round().astype(np.uint8)


def _example(jpeg, label, size):
  feature = {
      "image/encoded": tf.train.Feature(bytes_list=tf.train.BytesList(value=[jpeg])),
      "image/format": tf.train.Feature(bytes_list=tf.train.BytesList(value=[b"JPEG"])),
      "image/class/label": tf.train.Feature(int64_list=tf.train.Int64List(value=[label])),
      "image/height": tf.train.Feature(int64_list=tf.train.Int64List(value=[size])),
      "image/width": tf.train.Feature(int64_list=tf.train.Int64List(value=[size])),
      "image/channels": tf.train.Feature(int64_list=tf.train.Int64List(value=[3])),
  }
  return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


def _write_split(directory, split, num_examples, num_shards, num_classes, image_size, rng):
  """Writes `num_examples` class-balanced, shuffled examples; returns the shard names."""
  labels = rng.permutation(np.arange(num_examples) % num_classes)
  bounds = np.linspace(0, num_examples, num_shards + 1).round().astype(int)
  names = []
  for shard in range(num_shards):
    name = f"{split}-{shard:05d}-of-{num_shards:05d}"
    with tf.io.TFRecordWriter(os.path.join(directory, name)) as writer:
      for start in range(bounds[shard], bounds[shard + 1], _BATCH):
        batch = labels[start:min(start + _BATCH, bounds[shard + 1])]
        for image, label in zip(draw_images(batch, image_size, rng), batch):
          jpeg = tf.io.encode_jpeg(image, quality=90).numpy()
          writer.write(_example(jpeg, int(label) + 1, image_size))  # 1-based, as ImageNet
    names.append(name)
  return names


def _generate(path, params, num_classes, image_size, train_examples, validation_examples, seed):
  train = _write_split(path, "train", train_examples, min(_TRAIN_SHARDS, train_examples),
                       num_classes, image_size, np.random.default_rng([seed, 0]))
  validation = _write_split(path, "validation", validation_examples,
                            min(_VALIDATION_SHARDS, validation_examples), num_classes, image_size,
                            np.random.default_rng([seed, 1]))
  with tf.io.gfile.GFile(os.path.join(path, "labels.txt"), "w") as f:
    f.write("".join(name + "\n" for name in class_names(num_classes)))
  generated_files.write_manifest(
      path, {"params": params, "train_shards": train, "validation_shards": validation})


def ensure_generated_data(directory, num_classes=10, image_size=64,
                          train_examples=DEFAULT_TRAIN_EXAMPLES,
                          validation_examples=DEFAULT_VALIDATION_EXAMPLES, seed=0):
  """Writes the data set under `directory` once; returns the directory of its shards.

  The shards go to a subdirectory named by the parameters, so different sizes coexist. A
  complete data set with a matching manifest is reused. Locally the data is written into a
  temporary directory next to it and renamed into place, so a crash or a concurrent writer
  never leaves a half-written data set; on remote file systems (gs://), where directories
  cannot be renamed, the manifest is written last and marks completion.
  """
  for name, value, low in (("num_classes", num_classes, 1), ("image_size", image_size, 8),
                           ("train_examples", train_examples, 1), ("validation_examples",
                                                                   validation_examples, 1)):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
      raise ValueError(f"ensure_generated_data: `{name}` must be an integer >= {low}; "
                       f"got {value!r}.")
  if num_classes > MAX_CLASSES:
    raise ValueError(f"ensure_generated_data: at most {MAX_CLASSES} classes can be drawn "
                     f"distinctly; got num_classes={num_classes}. Use real data for more.")
  params = {
      "version": _FORMAT_VERSION, "num_classes": int(num_classes), "image_size": int(image_size),
      "train_examples": int(train_examples), "validation_examples": int(validation_examples),
      "seed": int(seed)
  }
  path = os.path.join(
      directory, f"generated-c{num_classes}-s{image_size}-t{train_examples}"
      f"-v{validation_examples}-seed{seed}")
  start = time.time()
  if not generated_files.build_once(
      directory, path, params, _FILE_KEYS, lambda target: _generate(
          target, params, num_classes, image_size, train_examples, validation_examples, seed)):
    return path
  logging.info("Generated %d + %d %dx%d images of %d classes in %s (%.1f s).", train_examples,
               validation_examples, image_size, image_size, num_classes, path,
               time.time() - start)
  return path
