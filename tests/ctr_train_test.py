"""End-to-end tests of trainers/ctr/train.py: short runs on a small generated click log and
on Criteo-layout files with a malformed line."""

import os

import numpy as np
import pytest
import tensorflow as tf

from tests import pytest_main
from tests import trainer_outputs
from trainers.ctr import config as config_lib
from trainers.ctr import generated_clicks
from trainers.ctr import train

TINY = dict(generated_train_lines=8192, generated_eval_lines=2048, global_batch_size=128,
            steps_per_loop=5, eval_every=20, log_every=5, embedding_dim=4, bottom_mlp=(8,),
            top_mlp=(8,), learning_rate=0.01, lr_schedule="constant", deterministic=True, seed=3)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp("clicks"))


def _config(model_dir, data_dir, **overrides):
  return config_lib.EmbeddingConfig(
      **dict(TINY, model_dir=str(model_dir), data_dir=data_dir, **overrides)).validate()


@pytest.mark.parametrize("sparse_mode", ["dense", "lazy"])
def test_short_run_learns_and_writes_tensorboard_and_checkpoints(tmp_path, data_dir, sparse_mode):
  metrics = train.train_and_evaluate(
      _config(tmp_path, data_dir, train_steps=60, sparse_mode=sparse_mode))
  assert set(metrics) == {"auc", "log_loss", "click_rate", "planted_auc"}
  assert 0.7 < metrics["planted_auc"] < 0.95
  assert metrics["auc"] > 0.6  # chance is 0.5
  assert metrics["log_loss"] < 0.56  # predicting the click rate alone: about 0.562
  losses = trainer_outputs.scalars(os.path.join(tmp_path, "train"), "loss")
  assert [s for s, _ in losses] == list(range(5, 61, 5))
  assert np.mean([v for _, v in losses[-3:]]) < np.mean([v for _, v in losses[:3]])
  evaluations = trainer_outputs.scalars(os.path.join(tmp_path, "eval"), "auc")
  assert [s for s, _ in evaluations] == [20, 40, 60]
  assert evaluations[-1][1] == pytest.approx(metrics["auc"])
  checkpoint = tf.train.get_checkpoint_state(os.path.join(tmp_path, "checkpoints"))
  assert checkpoint.model_checkpoint_path.endswith("ckpt-60")


def test_stopped_and_resumed_run_equals_uninterrupted_run(tmp_path, data_dir):
  straight, resumed = tmp_path / "straight", tmp_path / "resumed"
  train.train_and_evaluate(_config(straight, data_dir, train_steps=40, sparse_mode="lazy"))
  train.train_and_evaluate(_config(resumed, data_dir, train_steps=20, sparse_mode="lazy"))
  train.train_and_evaluate(_config(resumed, data_dir, train_steps=40, sparse_mode="lazy"))
  want = trainer_outputs.final_weights(str(straight))
  got = trainer_outputs.final_weights(str(resumed))
  assert want.keys() == got.keys() and any("table" in name for name in want)
  for name in want:
    np.testing.assert_array_equal(got[name], want[name], err_msg=name)


def _criteo_files(directory, bad_line=None):
  """A train and an eval file in Criteo's layout, from the generator's lines."""
  log = generated_clicks.write_click_log(os.path.join(directory, "source"), 2048, 512, seed=5)
  lines = []
  for path in log["train_files"]:
    with open(path) as f:
      lines += f.read().splitlines()
  if bad_line is not None:
    lines.insert(bad_line - 1, "1\tnot enough fields")
  train_path, eval_path = os.path.join(directory, "train.tsv"), log["eval_files"][0]
  with open(train_path, "w") as f:
    f.write("\n".join(lines) + "\n")
  return train_path, eval_path


def test_criteo_files_with_a_bad_line_fail_naming_it_or_skip_it(tmp_path):
  train_path, eval_path = _criteo_files(str(tmp_path), bad_line=700)
  criteo = dict(data_source="criteo", train_files=train_path, eval_files=eval_path,
                table_sizes=(1000,), train_steps=10, eval_every=10)
  with pytest.raises(tf.errors.InvalidArgumentError, match=f"{train_path}:700"):
    train.train_and_evaluate(_config(tmp_path / "strict", None, **criteo))
  metrics = train.train_and_evaluate(
      _config(tmp_path / "skipping", None, skip_bad_records=True, **criteo))
  assert set(metrics) == {"auc", "log_loss", "click_rate"}  # no planted model for real files
  assert 0 < metrics["log_loss"] < 1


if __name__ == "__main__":
  pytest_main.main(__file__)
