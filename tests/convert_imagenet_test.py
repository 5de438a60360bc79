"""Tests of tools/convert_imagenet.py: class folders of JPEGs to shards data.py reads."""

import io
import os
import subprocess
import sys

import numpy as np
from PIL import Image
import pytest
import tensorflow as tf

from tests import pytest_main
from tools import convert_imagenet
from trainers.image_classification import data

# Created in this (unsorted) order; labels follow sorted names: n01 -> 1, n02 -> 2, zebra -> 3.
COLORS = {"zebra": (20, 20, 230), "n02": (20, 230, 20), "n01": (230, 20, 20)}
SORTED = ["n01", "n02", "zebra"]


def _cmyk_jpeg(rgb):
  """A JPEG that stores 4 components (TensorFlow encodes only 1 or 3)."""
  encoded = io.BytesIO()
  Image.fromarray(rgb).convert("CMYK").save(encoded, format="JPEG", quality=95)
  return encoded.getvalue()


def _records(output_dir, split):
  """The tf.train.Examples of a split's shards, in shard order."""
  paths = sorted(tf.io.gfile.glob(os.path.join(output_dir, f"{split}-*")))
  return [tf.train.Example.FromString(record.numpy()) for record in tf.data.TFRecordDataset(paths)]


def _jpeg_components(example):
  encoded = example.features.feature["image/encoded"].bytes_list.value[0]
  return int(tf.image.extract_jpeg_shape(encoded)[2])


@pytest.fixture
def tree(tmp_path):
  root = tmp_path / "ilsvrc"
  for name, color in COLORS.items():
    (root / name).mkdir(parents=True)
    for i, (h, w) in enumerate([(30, 40), (36, 36), (50, 28), (32, 48)]):
      image = np.broadcast_to(np.array(color, np.uint8), (h, w, 3))
      (root / name / f"{name}_{i}.JPEG").write_bytes(tf.io.encode_jpeg(image).numpy())
  # Not RGB JPEGs, as in ILSVRC: a PNG named .JPEG, a grayscale JPEG and a CMYK JPEG.
  (root / "n01" / "png.JPEG").write_bytes(
      tf.io.encode_png(np.full((30, 30, 3), COLORS["n01"], np.uint8)).numpy())
  (root / "n02" / "gray.JPEG").write_bytes(
      tf.io.encode_jpeg(np.full((30, 30, 1), 140, np.uint8)).numpy())
  (root / "zebra" / "cmyk.JPEG").write_bytes(
      _cmyk_jpeg(np.full((26, 34, 3), COLORS["zebra"], np.uint8)))
  (root / "n02" / "notes.txt").write_text("not an image")
  return str(root)


def _read_back(output_dir, image_size=8):
  config = data.DataConfig(source="tfrecord", data_dir=output_dir, image_size=image_size,
                           num_classes=3, global_batch_size=1, deterministic=True)
  images, labels = [], []
  for x, y in data.eval_dataset(config):
    images.append(x.numpy()[0] * data.STDDEV_RGB + data.MEAN_RGB)
    labels.append(int(y[0]))
  return np.stack(images), np.array(labels)


def test_convert_and_read_back(tree, tmp_path, capsys):
  out = str(tmp_path / "out")
  paths = convert_imagenet.convert(tree, out, "validation", num_shards=3)
  assert [os.path.basename(p) for p in paths] == [f"validation-0000{i}-of-00003" for i in range(3)]
  assert sorted(os.listdir(out)) == ["labels.txt"] + [os.path.basename(p) for p in paths]
  with open(os.path.join(out, "labels.txt")) as f:
    assert f.read() == "n01\nn02\nzebra\n"
  progress = capsys.readouterr().err
  assert "\r" in progress and "15/15 images" in progress and "ETA" in progress
  # The PNG, grayscale and CMYK files are stored as RGB JPEGs, as the records say.
  assert [_jpeg_components(e) for e in _records(out, "validation")] == [3] * 15

  images, labels = _read_back(out)
  np.testing.assert_array_equal(np.bincount(labels), [5, 5, 5])
  for image, label in zip(images, labels):
    mean = image.reshape(-1, 3).mean(axis=0)
    if label == 1 and np.ptp(mean) < 10:  # the grayscale image of n02
      np.testing.assert_allclose(mean, 140, atol=4)
      continue
    np.testing.assert_allclose(mean, COLORS[SORTED[label]], atol=6)
  assert len(set(labels[:5])) > 1  # files are shuffled across shards


def test_train_split_and_resize(tree, tmp_path):
  out = str(tmp_path / "out")
  convert_imagenet.convert(tree, out, "train", num_shards=2, image_size=20, progress=False)
  shapes = []
  for name in sorted(os.listdir(out)):
    if name.startswith("train-"):
      for record in tf.data.TFRecordDataset(os.path.join(out, name)):
        example = tf.train.Example.FromString(record.numpy())
        encoded = example.features.feature["image/encoded"].bytes_list.value[0]
        shapes.append(tuple(tf.io.decode_jpeg(encoded).shape))
        assert 1 <= example.features.feature["image/class/label"].int64_list.value[0] <= 3
  assert len(shapes) == 15
  assert all(min(h, w) == 20 and c == 3 for h, w, c in shapes)
  assert (20, 27, 3) in shapes  # the 30 x 40 images keep their aspect ratio
  x, y = next(
      iter(
          data.train_dataset(
              data.DataConfig(source="tfrecord", data_dir=out, image_size=8, num_classes=3,
                              global_batch_size=4))))
  assert x.shape == (4, 8, 8, 3) and set(y.numpy()) <= {0, 1, 2}


@pytest.mark.parametrize("kwargs, message", [
    (dict(input_dir="missing"), r"--input_dir=.*missing.*no such directory"),
    (dict(split="val"), r"--split='val'.*train, validation"),
    (dict(num_shards=0), r"--num_shards=0.*>= 1"),
    (dict(num_shards=16), r"--num_shards=16.*15 images"),
    (dict(num_shards=2.5), r"--num_shards=2.5.*integer >= 1, or unset"),
    (dict(image_size=0), r"--image_size=0"),
    (dict(output_dir=""), r"--output_dir"),
])
def test_bad_inputs(tree, tmp_path, kwargs, message):
  args = dict(input_dir=tree, output_dir=str(tmp_path / "out"), split="train", num_shards=2)
  args.update(kwargs)
  if args["input_dir"] == "missing":
    args["input_dir"] = str(tmp_path / "missing")
  with pytest.raises(ValueError, match=message):
    convert_imagenet.convert(**args)
  assert not os.path.exists(tmp_path / "out")  # nothing written


def test_empty_class_folder_and_other_classes(tree, tmp_path):
  out = str(tmp_path / "out")
  convert_imagenet.convert(tree, out, "train", num_shards=1, progress=False)
  os.mkdir(os.path.join(tree, "extra"))
  with pytest.raises(ValueError, match=r"--input_dir.*class folder 'extra' has no images"):
    convert_imagenet.convert(tree, out, "validation", num_shards=1)
  (tmp_path / "ilsvrc" / "extra" / "a.JPEG").write_bytes(
      tf.io.encode_jpeg(np.zeros((8, 8, 3), np.uint8)).numpy())
  with pytest.raises(ValueError, match=r"--output_dir.*labels.txt lists other classes"):
    convert_imagenet.convert(tree, out, "validation", num_shards=1)


@pytest.mark.parametrize("split, num_images, expected", [("train", 15, 15), ("train", 5000, 1024),
                                                         ("validation", 5000, 128),
                                                         ("validation", 1, 1)])
def test_default_shard_counts(split, num_images, expected):
  assert convert_imagenet.default_num_shards(split, num_images) == expected


def test_default_num_shards_is_one_shard_per_image_for_a_small_folder(tree, tmp_path):
  out = str(tmp_path / "out")
  paths = convert_imagenet.convert(tree, out, "validation", progress=False)
  assert [os.path.basename(p) for p in paths] == [f"validation-{i:05d}-of-00015" for i in range(15)]
  assert all(os.path.getsize(p) for p in paths)  # no empty shard
  assert sorted(
      int(e.features.feature["image/class/label"].int64_list.value[0])
      for e in _records(out, "validation")) == [1] * 5 + [2] * 5 + [3] * 5


def test_remote_paths_through_gfile(tree, tmp_path):
  """ram:// is TensorFlow's in-memory file system: a stand-in for gs://, reached the same way
  (tf.io.gfile listing, reading, renaming; the TFRecord reader), with no local path."""
  root = f"ram://imagenet-{tmp_path.name}"
  for name in os.listdir(tree):
    for image in os.listdir(os.path.join(tree, name)):
      tf.io.gfile.makedirs(f"{root}/in/{name}")
      tf.io.gfile.copy(os.path.join(tree, name, image), f"{root}/in/{name}/{image}")
  paths = convert_imagenet.convert(f"{root}/in", f"{root}/out", "validation", num_shards=2,
                                   progress=False)
  assert paths == [f"{root}/out/validation-0000{i}-of-00002" for i in range(2)]
  _, labels = _read_back(f"{root}/out")
  np.testing.assert_array_equal(np.bincount(labels), [5, 5, 5])
  config = data.DataConfig(source="tfrecord", data_dir=f"{root}/out", image_size=8, num_classes=3,
                           global_batch_size=1)
  assert data.count_bad_records(config, "validation") == 0


def test_command_line(tree, tmp_path):
  root = os.path.dirname(os.path.dirname(os.path.abspath(convert_imagenet.__file__)))
  env = dict(
      os.environ,
      PYTHONPATH=os.pathsep.join([root] + os.environ.get("PYTHONPATH", "").split(os.pathsep)))
  out = str(tmp_path / "out")
  command = [
      sys.executable, "-m", "tools.convert_imagenet", f"--input_dir={tree}", f"--output_dir={out}",
      "--split=train"
  ]
  bad = subprocess.run(command + ["--num_shards=0"], env=env, capture_output=True, text=True,
                       check=False)
  assert bad.returncode != 0
  assert "--num_shards=0" in bad.stderr
  good = subprocess.run(command + ["--num_shards=2"], env=env, capture_output=True, text=True,
                        check=False)
  assert good.returncode == 0, good.stderr
  assert "Wrote 2 train shards" in good.stdout
  assert sorted(os.listdir(out)) == ["labels.txt", "train-00000-of-00002", "train-00001-of-00002"]
  default = subprocess.run(command[:-1] + ["--split=validation"], env=env, capture_output=True,
                           text=True, check=False)
  assert default.returncode == 0, default.stderr
  assert "Wrote 15 validation shards" in default.stdout


if __name__ == "__main__":
  pytest_main.main(__file__)
