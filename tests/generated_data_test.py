"""Tests of trainers/image_classification/generated_data.py.

Layout, labels, reuse and learnability.
"""

import json
import os

import numpy as np
import pytest
import tensorflow as tf

from tests import pytest_main
from trainers.image_classification import generated_data

FEATURES = {
    "image/encoded": tf.io.FixedLenFeature([], tf.string),
    "image/class/label": tf.io.FixedLenFeature([], tf.int64),
}


def _read(path):
  """(uint8 images [n, h, w, 3], 1-based labels [n]) of one shard."""
  images, labels = [], []
  for record in tf.data.TFRecordDataset(path):
    example = tf.io.parse_single_example(record, FEATURES)
    images.append(tf.io.decode_jpeg(example["image/encoded"]).numpy())
    labels.append(int(example["image/class/label"]))
  return np.stack(images), np.array(labels)


def _read_split(directory, split):
  parts = [
      _read(os.path.join(directory, name)) for name in sorted(os.listdir(directory))
      if name.startswith(split + "-")
  ]
  return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


@pytest.fixture(scope="module")
def small(tmp_path_factory):
  root = str(tmp_path_factory.mktemp("generated"))
  return root, generated_data.ensure_generated_data(root, num_classes=6, image_size=32,
                                                    train_examples=600, validation_examples=120,
                                                    seed=3)


def test_layout(small):
  root, directory = small
  assert os.path.dirname(directory) == root
  assert sorted(os.listdir(directory)) == (["labels.txt", "manifest.json"] +
                                           [f"train-{i:05d}-of-00008" for i in range(8)] +
                                           [f"validation-{i:05d}-of-00002" for i in range(2)])
  assert [n for n in os.listdir(root) if n.startswith(".")] == []  # no staging dir left
  with open(os.path.join(directory, "labels.txt")) as f:
    assert f.read().splitlines() == generated_data.class_names(6)
  with open(os.path.join(directory, "manifest.json")) as f:
    assert json.load(f)["params"]["num_classes"] == 6


def test_labels_are_1_based_balanced_and_images_have_the_size(small):
  _, directory = small
  images, labels = _read_split(directory, "train")
  assert images.shape == (600, 32, 32, 3)
  assert labels.min() == 1 and labels.max() == 6
  np.testing.assert_array_equal(np.bincount(labels, minlength=7), [0] + [100] * 6)
  _, val_labels = _read_split(directory, "validation")
  np.testing.assert_array_equal(np.bincount(val_labels, minlength=7), [0] + [20] * 6)
  # Shuffled across shards: the first shard already holds every class.
  _, first = _read(os.path.join(directory, "train-00000-of-00008"))
  assert set(first) == set(range(1, 7))


def test_second_call_reuses_without_rewriting(small, monkeypatch):
  root, directory = small
  mtimes = {n: os.path.getmtime(os.path.join(directory, n)) for n in os.listdir(directory)}

  def fail(*args, **kwargs):
    raise AssertionError("regenerated")

  monkeypatch.setattr(generated_data, "draw_images", fail)
  again = generated_data.ensure_generated_data(root, num_classes=6, image_size=32,
                                               train_examples=600, validation_examples=120, seed=3)
  assert again == directory
  paths = [os.path.join(directory, name) for name in os.listdir(directory)]
  assert {os.path.basename(p): os.path.getmtime(p) for p in paths} == mtimes


def test_incomplete_data_set_is_regenerated(tmp_path):
  args = dict(num_classes=3, image_size=16, train_examples=30, validation_examples=9, seed=0)
  directory = generated_data.ensure_generated_data(str(tmp_path), **args)
  os.remove(os.path.join(directory, "train-00002-of-00008"))
  assert generated_data.ensure_generated_data(str(tmp_path), **args) == directory
  assert os.path.exists(os.path.join(directory, "train-00002-of-00008"))


def test_same_seed_same_bytes_other_seed_other_images(tmp_path):
  args = dict(num_classes=3, image_size=16, train_examples=30, validation_examples=9)
  a = generated_data.ensure_generated_data(str(tmp_path / "a"), seed=1, **args)
  b = generated_data.ensure_generated_data(str(tmp_path / "b"), seed=1, **args)
  c = generated_data.ensure_generated_data(str(tmp_path / "c"), seed=2, **args)
  name = "train-00000-of-00008"
  with open(os.path.join(a, name), "rb") as fa, open(os.path.join(b, name), "rb") as fb:
    assert fa.read() == fb.read()
  assert not np.array_equal(_read(os.path.join(a, name))[0], _read(os.path.join(c, name))[0])


def test_class_attributes_are_distinct():
  names = generated_data.class_names(generated_data.MAX_CLASSES)
  assert len(set(names)) == generated_data.MAX_CLASSES == 256
  assert generated_data.class_attributes(0) == ("disc", "red", "noise")
  # Classes sharing a shape differ in color.
  assert generated_data.class_attributes(8)[0] == "disc"
  assert generated_data.class_attributes(8)[1] != "red"


def test_classes_show_in_the_pixels():
  """A nearest-class-mean classifier on coarse pixels beats chance by a wide margin."""
  rng = np.random.default_rng(0)
  num_classes = 10

  def features(labels):
    """Color histogram of the pixels far from the image's median (background) color."""
    images = generated_data.draw_images(labels, 32, rng).astype(np.float32)
    median = np.median(images.reshape(len(images), -1, 3), axis=1)[:, None, None, :]
    foreground = np.abs(images - median).sum(axis=-1) > 90
    quantized = (images // 64).astype(np.int64)
    bins = quantized[..., 0] * 16 + quantized[..., 1] * 4 + quantized[..., 2]
    hist = np.stack([np.bincount(b[f], minlength=64) for b, f in zip(bins, foreground)])
    return hist.astype(np.float32) / np.maximum(hist.sum(axis=1, keepdims=True), 1)

  train_labels = np.arange(2000) % num_classes
  test_labels = np.arange(500) % num_classes
  train, test = features(train_labels), features(test_labels)
  means = np.stack([train[train_labels == c].mean(axis=0) for c in range(num_classes)])
  distances = ((test[:, None, :] - means[None])**2).sum(axis=-1)
  accuracy = np.mean(distances.argmin(axis=1) == test_labels)
  assert accuracy > 4.0 / num_classes, accuracy  # about 0.7
  # ... but not trivially: color alone does not tell the shapes apart.
  assert accuracy < 0.95, accuracy


def test_images_are_drawn_in_vectorized_batches(tmp_path, monkeypatch):
  """What keeps generation quick: a shard's images are drawn up to _BATCH per numpy call,
  never one by one."""
  shipped_batch = generated_data._BATCH
  drawn = []
  draw = generated_data.draw_images

  def recording_draw(labels, image_size, rng):
    drawn.append(len(labels))
    return draw(labels, image_size, rng)

  monkeypatch.setattr(generated_data, "draw_images", recording_draw)
  monkeypatch.setattr(generated_data, "_BATCH", 16)
  generated_data.ensure_generated_data(str(tmp_path), num_classes=4, image_size=16,
                                       train_examples=320, validation_examples=64)
  # 8 train shards of 40 images, 2 validation shards of 32.
  assert drawn == [16, 16, 8] * 8 + [16, 16] * 2
  assert shipped_batch >= 64


@pytest.mark.parametrize("kwargs, message", [
    (dict(num_classes=0), "num_classes"),
    (dict(num_classes=257), "at most 256"),
    (dict(image_size=4), "image_size"),
    (dict(train_examples=0), "train_examples"),
])
def test_bad_arguments(tmp_path, kwargs, message):
  with pytest.raises(ValueError, match=message):
    generated_data.ensure_generated_data(str(tmp_path), **kwargs)


if __name__ == "__main__":
  pytest_main.main(__file__)
