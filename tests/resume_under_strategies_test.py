"""Exact resume under MirroredStrategy (2 logical CPUs) and MultiWorkerMirroredStrategy (2 local
worker processes): a run resumed from the checkpoint of step 20 ends at step 40 with exactly
the weights of the run that went 40 steps straight (--deterministic). A resumed run that saw
the first batches of its epoch again, or another worker's, would not.

Each trainer is run under one of the strategies (both share the input and checkpoint code
under test; running all four pairs doubles the suite's longest test): the ImageNet trainer with
two workers, the embedding trainer (lazy sparse updates) on two logical CPUs."""

import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from tests import local_cluster
from tests import pytest_main
from tests import trainer_outputs
from trainers.ctr import generated_clicks
from trainers.image_classification import generated_data

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HALF, FULL = 20, 40
COMMON = [
    "--steps_per_loop=5", "--log_every=5", "--eval_every=20", "--lr_schedule=constant",
    "--deterministic", "--keep_checkpoints=5"
]
TRAINERS = {
    "imagenet": ("trainers.image_classification.main", [
        "--model=resnet_small", "--image_size=16", "--num_classes=3", "--global_batch_size=16",
        "--warmup_steps=0", "--learning_rate=0.01", "--epsilon=1.0", "--data_source=tfrecord",
        "--seed=3"
    ]),
    "ctr": ("trainers.ctr.main", [
        "--sparse_mode=lazy", "--generated_train_lines=2048", "--generated_eval_lines=256",
        "--global_batch_size=32", "--table_sizes=1000", "--embedding_dim=4", "--bottom_mlp=8",
        "--top_mlp=8", "--seed=4"
    ]),
}
STRATEGIES = {
    "mirrored": ["--strategy=mirrored", "--num_logical_cpus=2"],
    "multi_worker": ["--strategy=multi_worker"]
}


@pytest.fixture(scope="module")
def data_dirs(tmp_path_factory):
  images = generated_data.ensure_generated_data(str(tmp_path_factory.mktemp("images")),
                                                num_classes=3, image_size=20, train_examples=480,
                                                validation_examples=48, seed=1)
  clicks = str(tmp_path_factory.mktemp("clicks"))
  generated_clicks.write_click_log(clicks, 2048, 256, seed=4)
  return {"imagenet": images, "ctr": clicks}


def _start(trainer, strategy, model_dir, steps, data_dir):
  """The trainer's processes (one, or one per worker) for a run to `steps`."""
  module, flags = TRAINERS[trainer]
  envs = (local_cluster.worker_envs(2)
          if strategy == "multi_worker" else [local_cluster.base_env()])
  command = [
      sys.executable, "-m", module, *flags, *COMMON, *STRATEGIES[strategy],
      f"--train_steps={steps}", f"--model_dir={model_dir}", f"--data_dir={data_dir}"
  ]
  return [
      subprocess.Popen(command, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                       text=True) for env in envs
  ]


def _finish(processes):
  logs = [process.communicate(timeout=400)[0] for process in processes]
  for process, log in zip(processes, logs):
    assert process.returncode == 0, log[-4000:]
  return logs[0]


def _stopped_at_half(straight, resumed):
  """`resumed` as a run stopped at step HALF would have left it: the straight run's model_dir
  with only the checkpoints up to HALF (the state after HALF steps, whatever came later)."""
  shutil.copytree(straight / "checkpoints", resumed / "checkpoints")
  for directory in [resumed / "checkpoints", *(resumed / "checkpoints").glob("worker-*")]:
    for path in directory.glob(f"ckpt-{FULL}.*"):
      path.unlink()
    tf.compat.v1.train.update_checkpoint_state(
        str(directory), str(directory / f"ckpt-{HALF}"),
        all_model_checkpoint_paths=[str(directory / f"ckpt-{HALF}")])


@pytest.mark.parametrize("trainer,strategy", [("imagenet", "multi_worker"), ("ctr", "mirrored")])
def test_resumed_run_ends_with_the_weights_of_a_straight_run(tmp_path, data_dirs, trainer,
                                                             strategy):
  straight, resumed = tmp_path / "straight", tmp_path / "resumed"
  data_dir = data_dirs[trainer]
  log = _finish(_start(trainer, strategy, straight, FULL, data_dir))
  assert "replica_programs plan" in log and "with 2 replica(s)" in log, log[-4000:]
  assert f"step {FULL}/{FULL} (100%)" in log and "final evaluation" in log, log[-4000:]
  if trainer == "ctr":
    assert "sparse_mode lazy" in log, log[-4000:]
  _stopped_at_half(straight, resumed)
  halfway = trainer_outputs.final_weights(str(resumed))
  log = _finish(_start(trainer, strategy, resumed, FULL, data_dir))
  assert f"resuming from {resumed}/checkpoints/ckpt-{HALF} at step {HALF}" in log, log[-4000:]
  assert "starts from the beginning" not in log

  # Where each worker's input position went: the shared checkpoint with one worker, each
  # worker's own directory with several.
  reader = tf.train.load_checkpoint(str(resumed / "checkpoints"))
  in_shared = [n for n in reader.get_variable_to_shape_map() if n.startswith("data_position/")]
  workers = sorted(p.name for p in (resumed / "checkpoints").glob("worker-*"))
  if strategy == "multi_worker":
    assert not in_shared and workers == ["worker-0", "worker-1"]
  else:
    assert in_shared and not workers

  want = trainer_outputs.final_weights(str(straight))
  got = trainer_outputs.final_weights(str(resumed))
  assert want.keys() == got.keys() == halfway.keys()
  assert any(not np.array_equal(got[n], halfway[n]) for n in got)  # the second half trained
  for name in want:
    np.testing.assert_array_equal(got[name], want[name], err_msg=name)


if __name__ == "__main__":
  pytest_main.main(__file__)
