"""Tests of the //trainers:embedding command line (trainers/ctr/main.py), run as a user would:
in its own process."""

import os
import subprocess
import sys

import pytest

from tests import pytest_main

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY_FLAGS = [
    "--generated_train_lines=4096", "--generated_eval_lines=1024", "--global_batch_size=128",
    "--steps_per_loop=5", "--train_steps=10", "--eval_every=10", "--log_every=5",
    "--embedding_dim=4", "--bottom_mlp=8", "--top_mlp=8"
]


def _run(flags, timeout=240):
  env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
  return subprocess.run([sys.executable, "-m", "trainers.ctr.main", *flags], env=env,
                        capture_output=True, text=True, timeout=timeout, cwd=ROOT)


def test_shard_optimizer_state_splits_the_mlps_and_keeps_the_tables(tmp_path):
  result = _run(TINY_FLAGS + [
      f"--model_dir={tmp_path}", "--strategy=mirrored", "--num_logical_cpus=2",
      "--shard_optimizer_state"
  ])
  assert result.returncode == 0, result.stderr[-3000:]
  assert "Adam: state sharded across 2 replicas" in result.stderr
  assert "final evaluation" in result.stdout + result.stderr


@pytest.mark.parametrize("flag,message", [
    ("--sparse_mode=eager", "--sparse_mode='eager' is not valid: expected one of dense, lazy"),
    ("--table_sizes=10,x", "--table_sizes item 'x' is not valid: expected an integer"),
    ("--table_sizes=5,6,7", "--table_sizes='5,6,7' is not valid: expected one size for every "
     "feature or 26 sizes"),
    ("--data_source=criteo", "--table_sizes='' is not valid"),
    ("--embedding_dim=0", "--embedding_dim=0 is not valid"),
])
def test_bad_flag_stops_before_any_work(tmp_path, flag, message):
  model_dir = tmp_path / "model"
  result = _run(TINY_FLAGS + [f"--model_dir={model_dir}", flag], timeout=120)
  assert result.returncode != 0
  assert message in result.stderr
  assert not model_dir.exists()  # nothing was written


def test_missing_criteo_files_are_named(tmp_path):
  missing = str(tmp_path / "day_*.gz")
  result = _run(TINY_FLAGS + [
      f"--model_dir={tmp_path / 'model'}", "--data_source=criteo", "--table_sizes=1000",
      f"--train_files={missing}", f"--eval_files={missing}"
  ])
  assert result.returncode != 0
  assert f"no file matches '{missing}'" in result.stderr


if __name__ == "__main__":
  pytest_main.main(__file__)
