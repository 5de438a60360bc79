"""End-to-end tests of trainers/image_classification/train.py and its config.

They train on tiny generated data.
"""

import dataclasses
import logging
import os

import numpy as np
import pytest
import tensorflow as tf

from tests import pytest_main
from tests import trainer_outputs
from trainers.image_classification import config as config_lib
from trainers.image_classification import generated_data
from trainers.image_classification import train

TINY = dict(model="resnet_small", image_size=16, num_classes=3, global_batch_size=16,
            steps_per_loop=5, eval_every=10, log_every=5, warmup_steps=0, learning_rate=0.01,
            epsilon=1.0, lr_schedule="constant", data_source="tfrecord", deterministic=True, seed=3)


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
  return generated_data.ensure_generated_data(str(tmp_path_factory.mktemp("data")), num_classes=3,
                                              image_size=20, train_examples=192,
                                              validation_examples=48, seed=1)


def _config(model_dir, data_dir, **overrides):
  return config_lib.ImagenetConfig(
      **dict(TINY, model_dir=str(model_dir), data_dir=data_dir, **overrides)).validate()


def test_short_run_learns_and_writes_tensorboard_and_checkpoints(tmp_path, tiny_data):
  metrics = train.train_and_evaluate(_config(tmp_path, tiny_data, train_steps=60))
  assert set(metrics) == {"top1", "top5"}
  assert metrics["top5"] == 1.0  # 3 classes: the top 5 always holds the label
  losses = trainer_outputs.scalars(os.path.join(tmp_path, "train"), "loss")
  assert [s for s, _ in losses] == list(range(5, 61, 5))
  assert np.mean([v for _, v in losses[-3:]]) < np.mean([v for _, v in losses[:3]])
  for tag in ("accuracy", "learning_rate", "examples_per_sec"):
    assert trainer_outputs.scalars(os.path.join(tmp_path, "train"), tag)
  evaluations = trainer_outputs.scalars(os.path.join(tmp_path, "eval"), "top1")
  assert [s for s, _ in evaluations] == [10, 20, 30, 40, 50, 60]
  checkpoints = tf.train.get_checkpoint_state(os.path.join(tmp_path, "checkpoints"))
  assert checkpoints.model_checkpoint_path.endswith("ckpt-60")
  assert len(checkpoints.all_model_checkpoint_paths) == 3  # keep_checkpoints


def test_stopped_and_resumed_run_equals_uninterrupted_run(tmp_path, tiny_data):
  straight, resumed = tmp_path / "straight", tmp_path / "resumed"
  train.train_and_evaluate(_config(straight, tiny_data, train_steps=30))
  train.train_and_evaluate(_config(resumed, tiny_data, train_steps=20))
  train.train_and_evaluate(_config(resumed, tiny_data, train_steps=30))
  want = trainer_outputs.final_weights(str(straight))
  got = trainer_outputs.final_weights(str(resumed))
  assert want.keys() == got.keys()
  for name in want:
    np.testing.assert_array_equal(got[name], want[name], err_msg=name)


def test_skip_bad_records_counts_them_before_training(tmp_path, tiny_data, caplog):
  with caplog.at_level(logging.INFO):
    metrics = train.train_and_evaluate(
        _config(tmp_path, tiny_data, train_steps=5, steps_per_loop=5, eval_every=5, log_every=5,
                skip_bad_records=True))
  assert set(metrics) == {"top1", "top5"}
  assert "--skip_bad_records: 0 bad train record(s) skipped in" in caplog.text
  assert "--skip_bad_records: 0 bad validation record(s) skipped in" in caplog.text


def test_resume_after_the_last_step_only_evaluates(tmp_path, tiny_data):
  train.train_and_evaluate(_config(tmp_path, tiny_data, train_steps=10))
  before = trainer_outputs.final_weights(str(tmp_path))
  metrics = train.train_and_evaluate(_config(tmp_path, tiny_data, train_steps=10))
  assert set(metrics) == {"top1", "top5"}
  after = trainer_outputs.final_weights(str(tmp_path))
  for name in before:
    np.testing.assert_array_equal(before[name], after[name])


def test_label_smoothing_loss_matches_formula():
  logits = tf.constant([[2.0, 0.0, -1.0], [0.5, 0.5, 3.0]])
  labels = tf.constant([0, 2])
  got = train.make_loss(0.1)(labels, logits).numpy()
  log_probs = tf.nn.log_softmax(logits).numpy().astype(np.float64)
  want = [0.9 * -log_probs[i, labels[i]] + 0.1 * -np.mean(log_probs[i]) for i in range(2)]
  np.testing.assert_allclose(got, want, rtol=1e-6)


BAD_CONFIGS = [
    ({"learning_rate": -1.0}, "--learning_rate=-1.0 is not valid: expected a finite number"),
    ({"beta_1": 1.0}, r"--beta_1=1.0 is not valid: expected a number in \[0, 1\)"),
    ({"epsilon": 0.0}, "--epsilon=0.0 is not valid: expected a finite number > 0"),
    ({"clipnorm": 1.0, "global_clipnorm": 1.0}, "--clipnorm=1.0 is not valid"),
    ({"lr_schedule": "linear"}, "--lr_schedule='linear' is not valid: expected one of"),
    ({"data_source": "imagenet"}, "--data_source='imagenet' is not valid"),
    ({"data_dir": None}, "--data_dir=None is not valid: expected a directory of shards"),
    ({"strategy": "gpu"}, "--strategy='gpu' is not valid: expected one of default"),
    ({"strategy": "tpu", "tpu": None}, "--tpu=None is not valid"),
    ({"train_examples": 0}, "--train_examples=0 is not valid"),
    ({"dtype": "float64"}, "--dtype='float64' is not valid"),
    ({"train_steps": 0}, "--train_steps=0 is not valid"),
    ({"train_steps": None}, "set exactly one of --train_steps and --train_epochs"),
    ({"train_epochs": 1.0}, "set exactly one of --train_steps and --train_epochs"),
    ({"eval_every": 7}, "--eval_every=7 is not valid: expected a multiple of"),
    ({"global_batch_size": 0}, "--global_batch_size=0 is not valid"),
    ({"label_smoothing": 1.0}, "--label_smoothing=1.0 is not valid"),
    ({"num_classes": 1}, "--num_classes=1 is not valid"),
    ({"data_source": "tfds",
      "num_classes": 10}, r"--num_classes=10 is not valid: expected 1000 with --data_source=tfds"),
    ({"xla_scope": "all"}, "--xla_scope='all' is not valid"),
    ({"model": "vgg16"}, "--model='vgg16' is not valid: expected one of resnet50"),
    ({"beta_2": -0.1}, r"--beta_2=-0.1 is not valid: expected a number in \[0, 1\)"),
    ({"clipvalue": 0.0}, "--clipvalue=0.0 is not valid: expected a number > 0"),
    ({"global_clipnorm": -1.0}, "--global_clipnorm=-1.0 is not valid"),
    ({"weight_decay": -0.1}, "--weight_decay=-0.1 is not valid: expected a number >= 0"),
    ({"warmup_steps": -1}, "--warmup_steps=-1 is not valid"),
    ({"lr_batch_scale": -256}, "--lr_batch_scale=-256 is not valid"),
    ({"image_size": 8}, "--image_size=8 is not valid: expected an integer >= 16"),
    ({"num_logical_cpus": -2}, "--num_logical_cpus=-2 is not valid"),
    ({"train_steps": None, "train_epochs": -1.0}, "--train_epochs=-1.0 is not valid"),
    ({"steps_per_loop": 0, "eval_every": 0, "log_every": 0}, "--steps_per_loop=0 is not valid"),
    ({"log_every": 3}, "--log_every=3 is not valid"),
    ({"keep_checkpoints": 0}, "--keep_checkpoints=0 is not valid"),
    ({"model_dir": ""}, "--model_dir='' is not valid"),
    ({"on_nonfinite": "ignore"}, "--on_nonfinite='ignore' is not valid: expected one of stop, "
     "skip"),
    ({"max_consecutive_nonfinite": -1}, "--max_consecutive_nonfinite=-1 is not valid"),
]


@pytest.mark.parametrize("overrides,message", BAD_CONFIGS)
def test_bad_settings_are_refused_naming_the_flag(overrides, message):
  values = dict(TINY, model_dir="/tmp/unused", data_dir="/tmp/unused", train_steps=10)
  values.update(overrides)
  with pytest.raises(ValueError, match=message):
    config_lib.ImagenetConfig(**values).validate()


def test_every_setting_has_a_bad_value_test():
  tested = {name for overrides, _ in BAD_CONFIGS for name in overrides}
  untestable = {"amsgrad", "deterministic", "seed", "shard_optimizer_state", "skip_bad_records"}
  fields = {f.name for f in dataclasses.fields(config_lib.ImagenetConfig)}
  assert fields - tested == untestable


def test_model_names_match_the_builders():
  from trainers.image_classification import models  # pylint: disable=g-import-not-at-top
  assert set(config_lib.MODELS) == set(models.MODELS)


def test_batch_must_split_over_replicas():
  config = config_lib.ImagenetConfig(
      **dict(TINY, global_batch_size=10, train_steps=10, data_dir="/x"))
  with pytest.raises(ValueError, match="a multiple of the 4 replicas"):
    config.validate(num_replicas=4)


def test_epochs_become_whole_loops_of_steps():
  config = config_lib.ImagenetConfig(
      **dict(TINY, train_epochs=2.0, train_examples=1000, data_dir="/x"))
  # 2 epochs of 1000 examples at 16 per step: 125 steps, rounded down to loops of 5.
  assert config.total_steps() == 125
  assert dataclasses.replace(config, steps_per_loop=10, eval_every=10,
                             log_every=10).total_steps() == 120


if __name__ == "__main__":
  pytest_main.main(__file__)
