"""Tests of trainers/image_classification/data.py on generated shards and on hand-made images."""

import dataclasses
import io
import logging
import os
import re

import numpy as np
from PIL import Image
import pytest
import tensorflow as tf

from tests import pytest_main
from trainers.image_classification import data
from trainers.image_classification import generated_data

NUM_CLASSES = 4


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
  # 8 train shards of 20 and 2 validation shards of 20 examples.
  return generated_data.ensure_generated_data(str(tmp_path_factory.mktemp("data")),
                                              num_classes=NUM_CLASSES, image_size=24,
                                              train_examples=160, validation_examples=40, seed=5)


def _config(data_dir, **overrides):
  kwargs = dict(source="tfrecord", data_dir=data_dir, image_size=16, num_classes=NUM_CLASSES,
                global_batch_size=8, shuffle_buffer=64, seed=1, deterministic=True)
  kwargs.update(overrides)
  return data.DataConfig(**kwargs)


def _context(num_pipelines, pipeline_id, replicas):
  return tf.distribute.InputContext(num_input_pipelines=num_pipelines,
                                    input_pipeline_id=pipeline_id, num_replicas_in_sync=replicas)


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
  parts = [
      _rows(_eval_images(config, _context(num_pipelines, i, num_pipelines)))
      for i in range(num_pipelines)
  ]
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
    ys = np.concatenate([y for _, y in _batches(data.train_dataset(config, _context(2, i, 2)), 40)])
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
          "image/encoded": tf.train.Feature(bytes_list=tf.train.BytesList(value=[_jpeg(image)])),
          "image/class/label": tf.train.Feature(int64_list=tf.train.Int64List(value=[label])),
      }
      writer.write(
          tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString())


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
  (small,
   _), = _batches(data.eval_dataset(_config(str(tmp_path), image_size=16, global_batch_size=1)))
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


def _cmyk_jpeg(rgb):
  """A JPEG that stores 4 components, as some of ILSVRC's do (TensorFlow encodes 1 or 3)."""
  encoded = io.BytesIO()
  Image.fromarray(rgb).convert("CMYK").save(encoded, format="JPEG", quality=95)
  return encoded.getvalue()


def test_grayscale_and_cmyk_jpegs_of_mixed_sizes_read_as_rgb(tmp_path):
  """Shards of other converters may keep ILSVRC's JPEGs as they are: 1 or 4 components."""
  colors = {0: (200, 40, 40), 1: (40, 40, 200), 2: (130, 130, 130)}
  jpegs = [
      _cmyk_jpeg(np.full((30, 50, 3), colors[0], np.uint8)),
      _cmyk_jpeg(np.full((64, 20, 3), colors[1], np.uint8)),
      _jpeg(np.full((18, 40, 1), colors[2][0], np.uint8)),
      _jpeg(np.full((40, 30, 3), colors[0], np.uint8)),
  ]
  labels = [1, 2, 3, 1]
  assert [int(tf.image.extract_jpeg_shape(j)[2]) for j in jpegs] == [4, 4, 1, 3]
  for split in ("train", "validation"):
    _write_records(tmp_path / f"{split}-00000-of-00001",
                   [_example(jpeg, label) for jpeg, label in zip(jpegs, labels)])
  config = _config(str(tmp_path), global_batch_size=4, shuffle_buffer=4)
  for dataset in (data.eval_dataset(config), data.train_dataset(config).take(2)):
    for x, y in _batches(dataset):
      for image, label in zip(_unnormalize(x), y):
        assert image.shape == (16, 16, 3)
        np.testing.assert_allclose(image.reshape(-1, 3).mean(axis=0), colors[label], atol=6)
  assert data.count_bad_records(config, "train") == 0


def test_labels_outside_num_classes_fail(shards):
  dataset = data.eval_dataset(_config(shards, label_offset=0))  # labels become 1..4
  with pytest.raises(
      tf.errors.InvalidArgumentError, match=r"validation-0000[01]-of-00002:\d+: "
      r"image/class/label is 4: with label_offset=0 that is class 4, not in "
      r"\[0, num_classes=4\)"):
    _batches(dataset)


# Bad data: small shards of 6 records (labels 1..6, 1-based, 8 classes) with one record spoilt.

_GOOD_LABELS = [1, 2, 3, 4, 5, 6]


def _example(jpeg, label):
  feature = {}
  if jpeg is not None:
    feature["image/encoded"] = tf.train.Feature(bytes_list=tf.train.BytesList(value=[jpeg]))
  if label is not None:
    feature["image/class/label"] = tf.train.Feature(int64_list=tf.train.Int64List(value=[label]))
  return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


@pytest.fixture(scope="module")
def good_jpegs():
  rng = np.random.default_rng(0)
  return [_jpeg(rng.integers(0, 256, (12 + i, 16, 3), dtype=np.uint8)) for i in range(6)]


def _records(jpegs, labels=_GOOD_LABELS):
  return [_example(j, label) for j, label in zip(jpegs, labels)]


def _write_records(path, records):
  with tf.io.TFRecordWriter(str(path)) as writer:
    for record in records:
      writer.write(record)
  return str(path)


def _bad_config(data_dir, **overrides):
  return _config(str(data_dir), num_classes=8, global_batch_size=1, **overrides)


def _labels(dataset):
  return sorted(int(y) for _, ys in _batches(dataset) for y in ys)


def _spoil(jpegs, kind):
  """The record that `kind` describes, and the problem the error should state."""
  jpeg = jpegs[3]
  return {
      "not_an_example": (b"\xff\xfe not a proto", "the record is not a tf.train.Example"),
      "garbage_jpeg": (_example(b"not a jpeg", 4), "image/encoded is not a JPEG: its 10 bytes "
                       "start with 6e 6f 74 20 (a JPEG starts with ff d8)"),
      "png": (_example(b"\x89PNG\r\n\x1a\n" + bytes(40), 4), "image/encoded is not a JPEG: "
              "its 48 bytes start with 89 50 4e 47"),
      "truncated_jpeg": (_example(jpeg[:len(jpeg) * 2 // 3], 4), f"image/encoded "
                         f"({len(jpeg) * 2 // 3} bytes) is a corrupt or truncated JPEG: "
                         f"decoding it fails"),
      "empty_jpeg": (_example(b"", 4), "image/encoded is empty"),
      "label_too_big": (_example(jpeg, 9), "image/class/label is 9: with label_offset=1 that "
                        "is class 8, not in [0, num_classes=8)"),
      "label_negative": (_example(jpeg, 0), "image/class/label is 0: with label_offset=1 that "
                         "is class -1"),
      "no_label": (_example(jpeg, None), "image/class/label is missing"),
      "no_image": (_example(None, 4), "image/encoded is missing"),
  }[kind]


_KINDS = [
    "not_an_example", "garbage_jpeg", "png", "truncated_jpeg", "empty_jpeg", "label_too_big",
    "label_negative", "no_label", "no_image"
]


@pytest.mark.parametrize("kind", _KINDS)
def test_bad_record_names_file_record_and_problem(tmp_path, good_jpegs, kind):
  records = _records(good_jpegs)
  records[3], problem = _spoil(good_jpegs, kind)
  path = _write_records(tmp_path / "validation-00000-of-00001", records)
  with pytest.raises(tf.errors.InvalidArgumentError) as error:
    _batches(data.eval_dataset(_bad_config(tmp_path)))
  message = str(error.value)
  assert "ImageNet data: bad record" in message
  assert f"{path}:3: {problem}" in message


@pytest.mark.parametrize("where", [0, 5])
def test_bad_first_or_last_record_is_found(tmp_path, good_jpegs, where):
  records = _records(good_jpegs)
  records[where] = _example(b"not a jpeg", 1)
  path = _write_records(tmp_path / "validation-00000-of-00001", records)
  with pytest.raises(tf.errors.InvalidArgumentError,
                     match=re.escape(f"{path}:{where}: image/encoded is not a JPEG")):
    _batches(data.eval_dataset(_bad_config(tmp_path)))


def test_bad_record_stops_training_naming_it(tmp_path, good_jpegs):
  records = _records(good_jpegs)
  records[2] = _example(good_jpegs[2], 20)
  _write_records(tmp_path / "train-00000-of-00002", _records(good_jpegs))
  path = _write_records(tmp_path / "train-00001-of-00002", records)
  with pytest.raises(tf.errors.InvalidArgumentError,
                     match=re.escape(f"{path}:2: image/class/label is 20")):
    _batches(data.train_dataset(_bad_config(tmp_path, shuffle_buffer=4)), 20)


def _framing(tmp_path, records, how):
  """A shard of `records` spoilt as `how`: (its bytes, record where it breaks, byte offset)."""
  starts = np.cumsum([0] + [len(r) + 16 for r in records])  # 16 framing bytes per record
  with open(_write_records(tmp_path / "whole_shard", records), "rb") as f:
    content = bytearray(f.read())
  if how == "truncated":
    return bytes(content[:starts[4] + 20]), 4, starts[4]
  if how == "flipped_data":  # the data CRC of record 2 fails
    content[starts[2] + 12 + 5] ^= 0xFF
    return bytes(content), 2, starts[2]
  content[1] ^= 0xFF  # "flipped_length": the length CRC of record 0 fails
  return bytes(content), 0, 0


@pytest.mark.parametrize("how", ["truncated", "flipped_data", "flipped_length"])
def test_corrupt_shard_names_file_and_record(tmp_path, good_jpegs, how):
  content, record, offset = _framing(tmp_path, _records(good_jpegs), how)
  path = str(tmp_path / "validation-00001-of-00002")
  with open(path, "wb") as f:
    f.write(content)
  _write_records(tmp_path / "validation-00000-of-00002", _records(good_jpegs))
  with pytest.raises(tf.errors.InvalidArgumentError) as error:
    _batches(data.eval_dataset(_bad_config(tmp_path)))
  assert (f"{path}:{record}: TFRecord framing breaks at byte {offset} of {len(content)}"
          in str(error.value))
  assert "corrupt or truncated" in str(error.value)


def test_skip_bad_records_drops_exactly_the_bad_ones_and_counts(tmp_path, good_jpegs, capfd,
                                                                caplog):
  first = _records(good_jpegs)
  first[1], _ = _spoil(good_jpegs, "label_too_big")
  first[5], _ = _spoil(good_jpegs, "not_an_example")  # the last record of a shard
  second = _records(good_jpegs)
  second[0], _ = _spoil(good_jpegs, "truncated_jpeg")
  second[3], _ = _spoil(good_jpegs, "no_label")
  broken, _, offset = _framing(tmp_path, _records(good_jpegs), "truncated")  # 0-3 are whole
  _write_records(tmp_path / "validation-00000-of-00004", first)
  _write_records(tmp_path / "validation-00001-of-00004", second)
  with open(tmp_path / "validation-00002-of-00004", "wb") as f:
    f.write(broken)
  _write_records(tmp_path / "validation-00003-of-00004", [])
  config = _bad_config(tmp_path, skip_bad_records=True)
  expected = [1, 3, 4, 5] + [2, 3, 5, 6] + [1, 2, 3, 4]
  assert _labels(data.eval_dataset(config)) == sorted(label - 1 for label in expected)
  assert ('skipping the rest of a shard: "' + str(tmp_path / "validation-00002-of-00004") +
          f":4: TFRecord framing breaks at byte {offset}") in capfd.readouterr().err
  # The images are exactly those of the good records.
  (tmp_path / "good").mkdir()
  _write_records(tmp_path / "good" / "validation-00000-of-00001",
                 [r for i, r in enumerate(first) if i not in (1, 5)] +
                 [r for i, r in enumerate(second) if i not in (0, 3)] + _records(good_jpegs)[:4])
  assert _rows(_eval_images(config)) == _rows(
      _eval_images(dataclasses.replace(config, data_dir=str(tmp_path / "good"))))

  shard = lambda i: str(tmp_path / f"validation-0000{i}-of-00004")
  caplog.clear()
  with caplog.at_level(logging.WARNING):
    assert data.count_bad_records(config, "validation") == 5
  logged = [r.getMessage() for r in caplog.records]
  assert logged[0] == ("ImageNet data: skipping 1 empty validation shard(s) (0 bytes, no "
                       f"records): {shard(3)}")
  assert sorted(logged[1:]) == sorted(f"ImageNet data: skipping {m}" for m in [
      f"{shard(0)}:1: image/class/label is 9: with label_offset=1 that is class 8, not in "
      "[0, num_classes=8)",
      f"{shard(0)}:5: the record is not a tf.train.Example with one bytes feature "
      "image/encoded and one int64 feature image/class/label",
      f"{shard(1)}:0: image/encoded ({len(good_jpegs[3]) * 2 // 3} bytes) is a corrupt or "
      "truncated JPEG: decoding it fails", f"{shard(1)}:3: image/class/label is missing",
      f"{shard(2)}:4: TFRecord framing breaks at byte {offset} of {len(broken)} (a length or "
      "CRC check or the read failed, see the warning before): the shard is corrupt or "
      "truncated, and none of its records from here on can be read"
  ])
  caplog.clear()
  with caplog.at_level(logging.WARNING):
    assert data.count_bad_records(config, "validation", max_logged=2) == 5
  assert len([
      r for r in caplog.records
      if r.getMessage().startswith(f"ImageNet data: skipping {tmp_path}/validation-")
  ]) == 2


def test_count_bad_records_of_good_data(shards):
  assert data.count_bad_records(_config(shards), "validation") == 0


def test_skip_bad_records_in_training(tmp_path, good_jpegs):
  records = _records(good_jpegs)
  records[2], _ = _spoil(good_jpegs, "garbage_jpeg")
  _write_records(tmp_path / "train-00000-of-00001", records)
  labels = np.concatenate([
      y for _, y in _batches(data.train_dataset(_bad_config(tmp_path, skip_bad_records=True)), 25)
  ])
  np.testing.assert_array_equal(np.bincount(labels, minlength=8), [5, 5, 0, 5, 5, 5, 0, 0])


def test_all_records_bad_fails_instead_of_spinning(tmp_path, good_jpegs):
  _write_records(tmp_path / "train-00000-of-00001", [_example(b"not a jpeg", 1)] * 3)
  with pytest.raises(
      tf.errors.InvalidArgumentError, match=r"no usable record in the 1 train "
      r"shard\(s\).*every record is bad and skip_bad_records drops it"):
    _batches(data.train_dataset(_bad_config(tmp_path, skip_bad_records=True)), 1)


@pytest.fixture
def op_determinism():
  """Op determinism for one test, as the trainer's --deterministic sets it."""
  from tensorflow.python.framework import config as tf_config  # no public way to turn it off
  enabled = tf_config.is_op_determinism_enabled()
  tf.config.experimental.enable_op_determinism()
  yield
  if not enabled:
    tf_config.disable_op_determinism()


@pytest.mark.parametrize("skip", [False, True])
def test_training_iterator_resumes_exactly(tmp_path, shards, skip, op_determinism):
  # The checks must leave the input position savable and the next pass's reshuffle restored
  # (which needed a shuffle buffer larger than a pass, under op determinism, to go wrong).
  config = _config(
      shards,
      skip_bad_records=skip,
      global_batch_size=16,  # 10 batches a pass
      shuffle_buffer=1000)
  iterator = iter(data.train_dataset(config))
  _ = [next(iterator) for _ in range(8)]
  path = tf.train.Checkpoint(iterator=iterator).write(str(tmp_path / "ckpt"))
  expected = [next(iterator) for _ in range(4)]
  restored = iter(data.train_dataset(config))
  tf.train.Checkpoint(iterator=restored).read(path).assert_consumed()
  for images, labels in expected:
    got_images, got_labels = next(restored)
    np.testing.assert_array_equal(got_labels.numpy(), labels.numpy())
    np.testing.assert_array_equal(got_images.numpy(), images.numpy())


def test_empty_shards_are_skipped_with_a_warning(tmp_path, good_jpegs, caplog):
  _write_records(tmp_path / "validation-00000-of-00002", [])
  with pytest.raises(ValueError, match=r"all 1 validation shard\(s\).*are empty.*"
                     r"validation-00000-of-00002"):
    data.eval_dataset(_bad_config(tmp_path))
  _write_records(tmp_path / "validation-00001-of-00002", _records(good_jpegs))
  with caplog.at_level(logging.WARNING):
    assert _labels(data.eval_dataset(_bad_config(tmp_path))) == [0, 1, 2, 3, 4, 5]
  assert (f"skipping 1 empty validation shard(s) (0 bytes, no records): "
          f"{tmp_path}/validation-00000-of-00002") in caplog.text


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
  os.symlink(os.path.join(shards, "train-00000-of-00008"), str(only_train / "train-00000-of-00008"))
  data.train_dataset(_config(str(only_train)))
  with pytest.raises(ValueError, match=r"only_train.*validation-\*"):
    data.eval_dataset(_config(str(only_train)))


@pytest.mark.parametrize("overrides, message", [
    (dict(source="folder"), "source"),
    (dict(data_dir=""), "data_dir"),
    (dict(image_size=0), "image_size"),
    (dict(global_batch_size=2.0), "global_batch_size"),
    (dict(skip_bad_records="yes"), "skip_bad_records"),
    (dict(source="tfds"), r"`num_classes` must be 1000 with source 'tfds'.*got 4"),
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
    data.train_dataset(_config(str(tmp_path), source="tfds", num_classes=data.TFDS_CLASSES))


if __name__ == "__main__":
  pytest_main.main(__file__)
