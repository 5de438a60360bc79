"""Tests of the //trainers:imagenet command line (trainers/image_classification/main.py).

Each case runs the real program in its own process, as a user would.
"""

import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from tests import pytest_main
from trainers.image_classification import generated_data

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY_FLAGS = [
    "--model=resnet_small", "--image_size=16", "--num_classes=3", "--global_batch_size=8",
    "--steps_per_loop=5", "--train_steps=10", "--eval_every=10", "--log_every=5",
    "--warmup_steps=0", "--data_source=tfrecord"
]


def _run(flags, timeout=240):
  env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
  return subprocess.run([sys.executable, "-m", "trainers.image_classification.main", *flags],
                        env=env, capture_output=True, text=True, timeout=timeout, cwd=ROOT)


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
  return generated_data.ensure_generated_data(str(tmp_path_factory.mktemp("data")), num_classes=3,
                                              image_size=20, train_examples=96,
                                              validation_examples=24, seed=2)


def test_mirrored_on_two_logical_cpus_runs_the_same_loop(tmp_path, tiny_data):
  result = _run(TINY_FLAGS + [
      f"--data_dir={tiny_data}", f"--model_dir={tmp_path}", "--strategy=mirrored",
      "--num_logical_cpus=2"
  ])
  assert result.returncode == 0, result.stderr[-3000:]
  assert "replica_programs plan" in result.stderr
  assert "with 2 replica(s)" in result.stderr
  assert "step 10/10 (100%)" in result.stderr and "examples/s" in result.stderr
  assert "final evaluation: top1" in result.stdout
  assert os.path.exists(os.path.join(tmp_path, "checkpoints", "checkpoint"))


def test_shard_optimizer_state_gives_the_same_run(tmp_path, tiny_data):
  """--shard_optimizer_state under MirroredStrategy: the state is split, the weights are not
  changed by it (a deterministic run with and without)."""
  weights = []
  for shard in (False, True):
    model_dir = tmp_path / f"shard_{shard}"
    result = _run(TINY_FLAGS + [
        f"--data_dir={tiny_data}", f"--model_dir={model_dir}", "--strategy=mirrored",
        "--num_logical_cpus=2", "--deterministic", f"--shard_optimizer_state={shard}"
    ])
    assert result.returncode == 0, result.stderr[-3000:]
    assert ("Adam: state sharded across 2 replicas" in result.stderr) == shard
    reader = tf.train.load_checkpoint(str(model_dir / "checkpoints"))
    weights.append({
        name: reader.get_tensor(name) for name in reader.get_variable_to_shape_map()
        if "/_slots/" in name or "model/" in name
    })
  assert weights[0].keys() == weights[1].keys() and any("/_slots/" in k for k in weights[0])
  for name, value in weights[0].items():
    np.testing.assert_array_equal(weights[1][name], value, err_msg=name)


@pytest.mark.parametrize("flag,message", [
    ("--epsilon=0", "--epsilon=0.0 is not valid: expected a finite number > 0"),
    ("--beta_2=1.5", r"--beta_2=1.5 is not valid: expected a number in [0, 1)"),
    ("--strategy=horovod", "--strategy='horovod' is not valid: expected one of default"),
    ("--learning_rate=-0.1", "--learning_rate=-0.1 is not valid"),
])
def test_bad_flag_stops_before_any_work(tmp_path, flag, message):
  model_dir = tmp_path / "model"
  result = _run(TINY_FLAGS + ["--data_dir=/nonexistent", f"--model_dir={model_dir}", flag],
                timeout=120)
  assert result.returncode != 0
  assert message in result.stderr
  assert not model_dir.exists()  # nothing was written


def test_missing_data_names_the_directory(tmp_path):
  result = _run(TINY_FLAGS + [f"--data_dir={tmp_path / 'empty'}", f"--model_dir={tmp_path}"])
  assert result.returncode != 0
  assert str(tmp_path / "empty") in result.stderr


def test_corrupt_shard_ends_the_run_naming_file_record_and_problem(tmp_path, tiny_data):
  data_dir = str(tmp_path / "data")
  shutil.copytree(tiny_data, data_dir)
  shard = os.path.join(data_dir, "train-00005-of-00008")
  sizes = [len(record.numpy()) + 16 for record in tf.data.TFRecordDataset(shard)]  # + framing
  with open(shard, "r+b") as f:
    f.truncate(sum(sizes[:7]) + 20)  # record 7 is cut short
  result = _run(TINY_FLAGS + [f"--data_dir={data_dir}", f"--model_dir={tmp_path / 'model'}"])
  assert result.returncode == 1
  # TensorFlow's own C++ warnings (file.cc:line) come from threads still reading ahead and
  # may land after the program's last line.
  lines = [
      line for line in result.stderr.strip().splitlines()
      if not re.match(r"[IWEF]\d{4} \S+\s+\d+ \w+\.cc:\d+\]", line)
  ]
  last = lines[-1]
  assert f"{shard}:7: TFRecord framing breaks at byte {sum(sizes[:7])}" in last
  assert "stopped by bad data: ImageNet data: bad record" in last
  assert "Traceback" not in result.stderr
  assert re.search(
      r"training stopped at step \d+ by InvalidArgumentError: ImageNet data: bad "
      r"record .*:7: TFRecord framing breaks", result.stderr)


if __name__ == "__main__":
  pytest_main.main(__file__)
