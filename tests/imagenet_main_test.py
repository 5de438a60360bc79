"""Tests of the //trainers:imagenet command line (trainers/image_classification/main.py).

Each case runs the real program in its own process, as a user would.
"""

import os
import subprocess
import sys

import pytest

from tests import pytest_main
from trainers.image_classification import generated_data

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY_FLAGS = ["--model=resnet_small", "--image_size=16", "--num_classes=3",
              "--global_batch_size=8", "--steps_per_loop=5", "--train_steps=10",
              "--eval_every=10", "--log_every=5", "--warmup_steps=0", "--data_source=tfrecord"]


def _run(flags, timeout=240):
  env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
  return subprocess.run([sys.executable, "-m", "trainers.image_classification.main", *flags],
                        env=env, capture_output=True, text=True, timeout=timeout, cwd=ROOT)


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
  return generated_data.ensure_generated_data(
      str(tmp_path_factory.mktemp("data")), num_classes=3, image_size=20,
      train_examples=96, validation_examples=24, seed=2)


def test_mirrored_on_two_logical_cpus_runs_the_same_loop(tmp_path, tiny_data):
  result = _run(TINY_FLAGS + [f"--data_dir={tiny_data}", f"--model_dir={tmp_path}",
                              "--strategy=mirrored", "--num_logical_cpus=2"])
  assert result.returncode == 0, result.stderr[-3000:]
  assert "replica_programs plan" in result.stderr
  assert "with 2 replica(s)" in result.stderr
  assert "step 10/10 (100%)" in result.stderr and "examples/s" in result.stderr
  assert "final evaluation: top1" in result.stdout
  assert os.path.exists(os.path.join(tmp_path, "checkpoints", "checkpoint"))


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


if __name__ == "__main__":
  pytest_main.main(__file__)
