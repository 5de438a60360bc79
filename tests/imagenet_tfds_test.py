"""The trainer on TFDS `imagenet2012`, end to end, offline, with the real TFDS builder.

The test writes a tiny manual download directory in the ILSVRC layout from images the project
draws (`generated_data.draw_images`), and the trainer has TFDS prepare it, trains and
evaluates on it, as a new user's first `--data_source=tfds` run would. Nothing of TFDS is
replaced: a missing dependency of its dataset preparation, or a change of the layout it
expects, fails here.
"""

import io
import os
import tarfile

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from tests import pytest_main
from trainers.image_classification import config as config_lib
from trainers.image_classification import data
from trainers.image_classification import generated_data
from trainers.image_classification import train

# Positions in TFDS's labels.txt of the classes written (its first, a middle and its last).
CLASSES = (0, 517, 999)
TRAIN_PER_CLASS = 4
VALIDATION_IMAGES = 7  # batches of 3: the evaluation reads 6, the last batch is incomplete
BATCH = 3
IMAGE_SIZE = 20


def _tfds_list(name):
  """Lines of a list bundled with TFDS's imagenet2012 (the builder reads the same files)."""
  path = os.path.join(os.path.dirname(tfds.__file__), "datasets", "imagenet2012", name)
  with open(path) as f:
    return f.read().split()


def _add(archive, name, content):
  info = tarfile.TarInfo(name)
  info.size = len(content)
  archive.addfile(info, io.BytesIO(content))


def _jpegs(labels, seed):
  images = generated_data.draw_images(labels, IMAGE_SIZE, np.random.default_rng(seed))
  return [tf.io.encode_jpeg(image).numpy() for image in images]


def write_manual_dir(manual_dir, wnids):
  """The two ILSVRC 2012 tars: train is a tar of `<wnid>.tar`, each a tar of that class's
  `<wnid>_<n>.JPEG`; validation is a flat tar of JPEGs, which TFDS labels by pairing the
  sorted names with the lines of its validation_labels.txt (so they go in unsorted here)."""
  os.makedirs(manual_dir)
  with tarfile.open(os.path.join(manual_dir, "ILSVRC2012_img_train.tar"), "w") as train_tar:
    for drawn, label in enumerate(CLASSES):
      inner = io.BytesIO()
      with tarfile.open(fileobj=inner, mode="w") as class_tar:
        for n, jpeg in enumerate(_jpegs([drawn] * TRAIN_PER_CLASS, seed=label)):
          _add(class_tar, f"{wnids[label]}_{n}.JPEG", jpeg)
      _add(train_tar, f"{wnids[label]}.tar", inner.getvalue())
  with tarfile.open(os.path.join(manual_dir, "ILSVRC2012_img_val.tar"), "w") as val_tar:
    jpegs = _jpegs(np.arange(VALIDATION_IMAGES) % len(CLASSES), seed=1)
    for n in reversed(range(VALIDATION_IMAGES)):
      _add(val_tar, f"ILSVRC2012_val_{n + 1:08d}.JPEG", jpegs[n])


@pytest.fixture(scope="module")
def wnids():
  names = _tfds_list("labels.txt")
  assert len(names) == data.TFDS_CLASSES
  return names


@pytest.fixture(scope="module")
def trained(tmp_path_factory, wnids):
  """(data_dir, model_dir, final metrics) of a short run that prepared the data itself."""
  data_dir = str(tmp_path_factory.mktemp("tfds"))
  write_manual_dir(os.path.join(data_dir, "downloads", "manual"), wnids)
  model_dir = str(tmp_path_factory.mktemp("model"))
  config = config_lib.ImagenetConfig(
      model="resnet_small", image_size=16, num_classes=data.TFDS_CLASSES, data_source="tfds",
      data_dir=data_dir, global_batch_size=BATCH, train_steps=4, steps_per_loop=2, eval_every=0,
      log_every=2, warmup_steps=0, learning_rate=0.01, lr_schedule="constant", deterministic=True,
      seed=1, model_dir=model_dir).validate()
  return data_dir, model_dir, train.train_and_evaluate(config)


def _data_config(data_dir):
  return data.DataConfig(source="tfds", data_dir=data_dir, image_size=16,
                         num_classes=data.TFDS_CLASSES, global_batch_size=BATCH, seed=2,
                         deterministic=True)


def test_trainer_prepares_trains_and_evaluates(trained):
  data_dir, model_dir, metrics = trained
  assert set(metrics) == {"top1", "top5"}
  assert all(0.0 <= value <= 1.0 for value in metrics.values())
  checkpoints = tf.train.get_checkpoint_state(os.path.join(model_dir, "checkpoints"))
  assert checkpoints.model_checkpoint_path.endswith("ckpt-4")
  splits = tfds.builder("imagenet2012", data_dir=data_dir).info.splits
  assert splits["train"].num_examples == len(CLASSES) * TRAIN_PER_CLASS
  assert splits["validation"].num_examples == VALIDATION_IMAGES


def test_train_labels_are_the_classes_positions_in_tfds_labels(trained):
  epoch = len(CLASSES) * TRAIN_PER_CLASS // BATCH  # shuffled, but one whole pass first
  dataset = data.train_dataset(_data_config(trained[0])).take(epoch)
  labels = np.concatenate([y.numpy() for _, y in dataset])
  images = [x.numpy() for x, _ in dataset]
  assert sorted(labels) == sorted(np.repeat(CLASSES, TRAIN_PER_CLASS))
  assert all(image.shape == (BATCH, 16, 16, 3) and np.isfinite(image).all() for image in images)


def test_validation_labels_pair_sorted_names_with_tfds_list_dropping_the_last_batch(trained, wnids):
  listed = _tfds_list("validation_labels.txt")[:VALIDATION_IMAGES]
  expected = sorted(wnids.index(wnid) for wnid in listed)
  labels = sorted(
      np.concatenate([y.numpy() for _, y in data.eval_dataset(_data_config(trained[0]))]))
  assert len(labels) == VALIDATION_IMAGES // BATCH * BATCH
  remaining = list(expected)
  for label in labels:  # a sub-multiset: one image of the incomplete batch is not evaluated
    remaining.remove(label)
  assert len(remaining) == VALIDATION_IMAGES % BATCH


if __name__ == "__main__":
  pytest_main.main(__file__)
