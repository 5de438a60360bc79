"""Tests of trainers/image_classification/data.py on generated shards and on hand-made images."""

import os

import numpy as np
import pytest
import tensorflow as tf

from tests import pytest_main
from trainers.image_classification import data
from trainers.image_classification import generated_data

NUM_CLASSES = 4


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
  # 8 train shards of 20 and 2 validation shards of 20 examples.
  return generated_data.ensure_generated_data(
      str(tmp_path_factory.mktemp("data")), num_classes=NUM_CLASSES, image_size=24,
      train_examples=160, validation_examples=40, seed=5)


def _config(data_dir, **overrides):
  kwargs = dict(source="tfrecord", data_dir=data_dir, image_size=16, num_classes=NUM_CLASSES,
                global_batch_size=8, shuffle_buffer=64, seed=1, deterministic=True)
  kwargs.update(overrides)
  return data.DataConfig(**kwargs)


def _context(num_pipelines, pipeline_id, replicas):
  return tf.distribute.InputContext(num_input_pipelines=num_pipelines,
                                    input_pipeline_id=pipeline_id,
                                    num_replicas_in_sync=replicas)


def _batches(dataset, n=None):
  if n is not None:
    dataset = dataset.take(n)
  return [(x.numpy(), y.numpy()) for x, y in dataset]


def _unnormalize(images):
  return images * np.array(data.STDDEV_RGB) + np.array(data.MEAN_RGB)


def test_train_shapes_dtypes_and_labels(shards):
  dataset = data.train_dataset(_config(shards))
  assert dataset.element_spec[0] == tf.TensorSpec([8, 16, 16, 3], tf.float32)
  assert dataset.element_spec[1] == tf.TensorSpec([8], tf.int64)
  batches = _batches(dataset, 40)  # two epochs: it repeats
  labels = np.concatenate([y for _, y in batches])
  assert labels.min() == 0 and labels.max() == NUM_CLASSES - 1
  np.testing.assert_array_equal(np.bincount(labels), [80] * NUM_CLASSES)
  pixels = _unnormalize(np.concatenate([x for x, _ in batches]))
  assert pixels.min() > -1 and pixels.max() < 256
  assert 40 < pixels.mean() < 215  # normalized with the ImageNet mean/std, not left in 0..255


def test_eval_is_one_pass_dropping_the_remainder(shards):
  batches = _batches(data.eval_dataset(_config(shards, global_batch_size=16)))
  assert len(batches) == 2  # 40 examples: 2 full batches, 8 dropped
  assert all(x.shape == (16, 16, 16, 3) and y.shape == (16,) for x, y in batches)
  labels = np.concatenate([y for _, y in batches])
  assert set(labels) <= set(range(NUM_CLASSES))


def test_per_replica_batch_size_with_input_context(shards):
  config = _config(shards, global_batch_size=16)
  train = data.train_dataset(config, _context(1, 0, 4))
  assert train.element_spec[0].shape == [4, 16, 16, 3]
  x, y = next(iter(train))
  assert x.shape == (4, 16, 16, 3) and y.shape == (4,)
  assert data.eval_dataset(config, _context(2, 1, 4)).element_spec[1].shape == [4]
  with pytest.raises(ValueError):  # 16 does not split over 3 replicas
    data.train_dataset(config, _context(1, 0, 3))


def _eval_images(config, context=None):
  return np.concatenate([x for x, _ in _batches(data.eval_dataset(config, context))])


def _rows(images):
  return {img.tobytes() for img in images}


@pytest.mark.parametrize("num_pipelines", [2, 3])  # 3 > 2 validation shards: shards examples
def test_input_pipelines_read_disjoint_parts(shards, num_pipelines):
  everything = _rows(_eval_images(_config(shards, global_batch_size=1)))
  assert len(everything) == 40
  config = _config(shards, global_batch_size=num_pipelines)  # 1 per replica
  parts = [_rows(_eval_images(config, _context(num_pipelines, i, num_pipelines)))
           for i in range(num_pipelines)]
  for i in range(num_pipelines):
    assert parts[i], i
    for j in range(i):
      assert not parts[i] & parts[j]
  assert set().union(*parts) <= everything
  assert len(set().union(*parts)) >= 40 - num_pipelines  # each drops < 1 batch of 1


def test_train_pipelines_read_their_own_shards(shards):
  config = _config(shards, global_batch_size=2)
  labels = []
  for i in range(2):
    ys = np.concatenate([y for _, y in _batches(data.train_dataset(config, _context(2, i, 2)),
                                                40)])
    labels.append(ys)
  # 4 shards of 20 each, per pipeline: one epoch is 80 examples, all classes present.
  for ys in labels:
    assert set(ys) == set(range(NUM_CLASSES))
  assert not np.array_equal(labels[0], labels[1])


def test_deterministic_with_seed(shards):
  first = _batches(data.train_dataset(_config(shards, seed=7)), 6)
  again = _batches(data.train_dataset(_config(shards, seed=7)), 6)
  other = _batches(data.train_dataset(_config(shards, seed=8)), 6)
  for (x1, y1), (x2, y2) in zip(first, again):
    np.testing.assert_array_equal(x1, x2)
    np.testing.assert_array_equal(y1, y2)
  assert not all(np.array_equal(x1, x3) for (x1, _), (x3, _) in zip(first, other))
  assert data.train_dataset(_config(shards)).options().deterministic
  assert not data.train_dataset(_config(shards, deterministic=False)).options().deterministic


def _jpeg(image):
  return tf.io.encode_jpeg(image, quality=100, chroma_downsampling=False).numpy()


def _write_shard(path, images, labels):
  with tf.io.TFRecordWriter(path) as writer:
    for image, label in zip(images, labels):
      feature = {
          "image/encoded": tf.train.Feature(bytes_list=tf.train.BytesList(
              value=[_jpeg(image)])),
          "image/class/label": tf.train.Feature(int64_list=tf.train.Int64List(value=[label])),
      }
      writer.write(tf.train.Example(
          features=tf.train.Features(feature=feature)).SerializeToString())


def test_eval_center_crop_of_a_known_image(tmp_path):
  # 40 x 64 image: a 3-pixel red frame around a horizontal gray ramp. Crop: 0.875 * 40 = 35
  # rows and columns, at offsets (3, 15) -- the frame is cut away.
  ramp = np.linspace(30, 220, 64)[None, :, None] * np.ones((40, 1, 3))
  image = ramp.copy()
  image[:3] = image[-3:] = image[:, :3] = image[:, -3:] = (255, 0, 0)
  image = image.round().astype(np.uint8)
  _write_shard(str(tmp_path / "validation-00000-of-00001"), [image], [2])
  config = _config(str(tmp_path), image_size=35, global_batch_size=1)
  assert data.center_crop_window(40, 64).numpy().tolist() == [3, 15, 35, 35]
  (x, y), = _batches(data.eval_dataset(config))
  assert y.tolist() == [1]
  decoded = tf.io.decode_jpeg(_jpeg(image)).numpy()
  assert decoded[1, 1, 0] > 200 and decoded[1, 1, 1] < 60  # the frame is there
  expected = (decoded[3:38, 15:50].astype(np.float32) - data.MEAN_RGB) / data.STDDEV_RGB
  pixels = _unnormalize(x[0])
  # decode_and_crop_jpeg upsamples chroma at the crop's edge slightly differently.
  np.testing.assert_allclose(pixels, _unnormalize(expected), atol=3)
  np.testing.assert_allclose(pixels[:, :30], _unnormalize(expected[:, :30]), atol=1e-3)
  inner = pixels[2:-2, 2:-2]  # JPEG ringing of the frame reaches a pixel or two
  assert np.abs(inner[..., 0] - inner[..., 1]).max() < 30  # gray (the frame: 255)
  np.testing.assert_allclose(pixels[17, :, 0], ramp[0, 15:50, 0], atol=6)
  # Resized to 16: still the middle of the ramp, increasing left to right.
  (small, _), = _batches(data.eval_dataset(_config(str(tmp_path), image_size=16,
                                                   global_batch_size=1)))
  row = _unnormalize(small[0])[8, :, 1]
  assert np.all(np.diff(row) > 0) and 65 < row[0] < 90 and 160 < row[-1] < 185


def test_train_augmentation_crops_and_flips(tmp_path):
  ramp = np.linspace(30, 220, 64)[None, :, None] * np.ones((48, 1, 3))
  _write_shard(str(tmp_path / "train-00000-of-00001"), [ramp.round().astype(np.uint8)], [1])
  config = _config(str(tmp_path), image_size=16, global_batch_size=1)
  rows = [_unnormalize(x[0])[8, :, 1] for x, _ in _batches(data.train_dataset(config), 24)]
  increasing = [np.all(np.diff(r) > 0) for r in rows]
  decreasing = [np.all(np.diff(r) < 0) for r in rows]
  assert all(i or d for i, d in zip(increasing, decreasing))  # a ramp, flipped or not
  assert 4 <= sum(increasing) <= 20
  spans = [abs(r[-1] - r[0]) for r in rows]  # crop width relative to the image
  assert max(spans) - min(spans) > 40
  assert max(spans) < 190


def test_labels_outside_num_classes_fail(shards):
  dataset = data.eval_dataset(_config(shards, label_offset=0))  # labels become 1..4
  with pytest.raises(tf.errors.InvalidArgumentError, match="num_classes=4"):
    _batches(dataset)


def test_missing_data_dir(tmp_path):
  missing = str(tmp_path / "nowhere")
  with pytest.raises(ValueError, match=r"nowhere.*does not exist.*train-\*") as e:
    data.train_dataset(_config(missing))
  assert "--data_source=generated" in str(e.value)
  assert "//tools:convert_imagenet" in str(e.value)


def test_no_shards(tmp_path, shards):
  with pytest.raises(ValueError, match=r"no train shards.*train-\*.*generated"):
    data.train_dataset(_config(str(tmp_path)))
  only_train = tmp_path / "only_train"
  only_train.mkdir()
  os.symlink(os.path.join(shards, "train-00000-of-00008"),
             str(only_train / "train-00000-of-00008"))
  data.train_dataset(_config(str(only_train)))
  with pytest.raises(ValueError, match=r"only_train.*validation-\*"):
    data.eval_dataset(_config(str(only_train)))


@pytest.mark.parametrize("overrides, message", [
    (dict(source="folder"), "source"),
    (dict(data_dir=""), "data_dir"),
    (dict(image_size=0), "image_size"),
    (dict(global_batch_size=2.0), "global_batch_size"),
])
def test_bad_config(overrides, message):
  kwargs = dict(source="tfrecord", data_dir="/tmp", image_size=16, num_classes=4,
                global_batch_size=8)
  kwargs.update(overrides)
  with pytest.raises(ValueError, match=message):
    data.DataConfig(**kwargs)


def test_tfds_without_data_says_how_to_get_it(tmp_path):
  pytest.importorskip("tensorflow_datasets")
  with pytest.raises(ValueError, match=r"imagenet2012.*ILSVRC2012_img_train.tar"):
    data.train_dataset(_config(str(tmp_path), source="tfds"))


if __name__ == "__main__":
  pytest_main.main(__file__)
