"""A real trainer process (//trainers:embedding, tiny settings) stopped by SIGTERM, killed by
SIGKILL at random moments, losing its data files or running out of disk: it always stops with
a clear message and resumes from its last complete checkpoint, and with --deterministic ends
with exactly the weights of an uninterrupted run."""

import glob
import os
import random
import resource
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf

from tests import local_cluster
from tests import pytest_main
from tests import trainer_outputs
from trainers.common import training_loop
from trainers.ctr import generated_clicks

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN_LINES, EVAL_LINES = 8192, 1024
FLAGS = [
    f"--generated_train_lines={TRAIN_LINES}", f"--generated_eval_lines={EVAL_LINES}",
    "--global_batch_size=64", "--steps_per_loop=2", "--eval_every=10", "--log_every=2",
    "--train_steps=120", "--embedding_dim=4", "--bottom_mlp=8", "--top_mlp=8",
    "--lr_schedule=constant", "--deterministic", "--seed=4", "--keep_checkpoints=2"
]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  directory = str(tmp_path_factory.mktemp("clicks"))
  generated_clicks.write_click_log(directory, TRAIN_LINES, EVAL_LINES, seed=4)  # shared cache
  return directory


class _Trainer:
  """The trainer in its own process, its log going to a file (a pipe could fill and stall it)."""

  def __init__(self, model_dir, data_dir, extra_flags=(), env=None, max_file_bytes=None):
    self.log_path = f"{model_dir}.log.{time.time_ns()}"

    def limit_file_size():  # in the child: writes past the limit fail as on a full disk
      signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
      resource.setrlimit(resource.RLIMIT_FSIZE, (max_file_bytes, max_file_bytes))

    with open(self.log_path, "w") as log:
      self.process = subprocess.Popen([
          sys.executable, "-m", "trainers.ctr.main", *FLAGS, f"--model_dir={model_dir}",
          f"--data_dir={data_dir}", *extra_flags
      ], env=env or local_cluster.base_env(), cwd=ROOT, stderr=log, stdout=log,
                                      preexec_fn=limit_file_size if max_file_bytes else None)

  def log(self):
    with open(self.log_path) as f:
      return f.read()

  def wait_for(self, text, timeout=120):
    """Waits until the log holds `text`, which must come."""
    deadline = time.time() + timeout
    while text not in self.log() and self.process.poll() is None and time.time() < deadline:
      time.sleep(0.05)
    assert text in self.log(), self.log()[-3000:]

  def running_after(self, text, timeout=120):
    """Waits for `text` in the log; False if the process ended first."""
    deadline = time.time() + timeout
    while text not in self.log() and self.process.poll() is None and time.time() < deadline:
      time.sleep(0.05)
    return self.process.poll() is None

  def finish(self, timeout=300):
    self.process.wait(timeout=timeout)
    return self.log()


def _latest_step(model_dir):
  path = tf.train.latest_checkpoint(os.path.join(model_dir, "checkpoints"))
  return int(path.rsplit("-", 1)[1]) if path else 0


def _run_to_end(model_dir, data_dir):
  """Runs to the end; returns the log and the seconds from the first compile to the exit."""
  trainer = _Trainer(model_dir, data_dir)
  trainer.wait_for("compiling the first step")
  start = time.time()
  log = trainer.finish()
  assert trainer.process.returncode == 0, log[-3000:]
  return log, time.time() - start


def test_sigterm_checkpoints_and_exits_with_the_interrupted_code(tmp_path, data_dir):
  trainer = _Trainer(tmp_path, data_dir)
  trainer.wait_for("step 10/120")
  trainer.process.send_signal(signal.SIGTERM)
  log = trainer.finish()
  assert trainer.process.returncode == training_loop.INTERRUPTED_EXIT_CODE, log[-3000:]
  assert "received SIGTERM: finishing the steps in flight" in log
  stopped = _latest_step(str(tmp_path))
  assert stopped >= 10 and f"stopped by SIGTERM at step {stopped} of 120" in log
  log, _ = _run_to_end(tmp_path, data_dir)
  assert f"resuming from {tmp_path}/checkpoints/ckpt-{stopped} at step {stopped}" in log


def test_sigterm_to_one_worker_stops_every_worker_at_the_same_step(tmp_path, data_dir):
  workers = [
      _Trainer(tmp_path / "model", data_dir, ["--strategy=multi_worker"], env)
      for env in local_cluster.worker_envs(2)
  ]
  try:
    workers[1].wait_for("step 10/120", timeout=240)
    workers[1].process.send_signal(signal.SIGTERM)
    logs = [worker.finish(timeout=120) for worker in workers]
  finally:
    for worker in workers:
      worker.process.kill()
  for worker, log in zip(workers, logs):
    assert worker.process.returncode == training_loop.INTERRUPTED_EXIT_CODE, log[-3000:]
  stopped = _latest_step(str(tmp_path / "model"))  # the chief's checkpoint
  assert stopped >= 10
  assert f"stopped by another worker at step {stopped} of 120" in logs[0]
  assert f"stopped by SIGTERM at step {stopped} of 120" in logs[1]


def test_sigkill_at_random_moments_loses_nothing(tmp_path, data_dir):
  straight, killed = tmp_path / "straight", tmp_path / "killed"
  _run_to_end(straight, data_dir)
  rng = random.Random(7)
  logs = []
  for attempt in range(3):  # killed while compiling, then at random steps of training
    trainer = _Trainer(killed, data_dir)
    target = min(_latest_step(str(killed)) + rng.randrange(12, 40, 2), 118)
    marker = "compiling the first step" if attempt == 0 else f"step {target}/120"
    assert trainer.running_after(marker), trainer.log()[-3000:]
    time.sleep(rng.uniform(0.0, 0.5))
    trainer.process.kill()
    logs.append(trainer.finish())
    step = _latest_step(str(killed))
    if step:  # whatever the moment of the kill, the last checkpoint is complete
      reader = tf.train.load_checkpoint(os.path.join(killed, "checkpoints"))
      assert reader.get_tensor("steps_done/.ATTRIBUTES/VARIABLE_VALUE") == step
  log, _ = _run_to_end(killed, data_dir)
  resumed = [
      line for text in logs[1:] + [log] for line in text.splitlines() if "resuming from" in line
  ]
  assert len(resumed) >= 2  # the runs after the second kill resumed from checkpoints
  want = trainer_outputs.final_weights(str(straight))
  got = trainer_outputs.final_weights(str(killed))
  assert want.keys() == got.keys()
  for name in want:
    np.testing.assert_array_equal(got[name], want[name], err_msg=name)


def test_full_disk_while_saving_keeps_the_previous_checkpoint(tmp_path, data_dir):
  first = _Trainer(tmp_path, data_dir, ["--train_steps=20"])
  assert "final evaluation" in first.finish() and first.process.returncode == 0
  checkpoint_bytes = max(os.path.getsize(p) for p in glob.glob(f"{tmp_path}/checkpoints/*data*"))
  full = _Trainer(tmp_path, data_dir, max_file_bytes=checkpoint_bytes // 2)
  log = full.finish()
  assert full.process.returncode != 0
  assert "resuming from" in log and "ckpt-20 at step 20" in log
  assert "training stopped at step 30 by" in log
  assert f"The last complete checkpoint is {tmp_path}/checkpoints/ckpt-20" in log
  assert _latest_step(str(tmp_path)) == 20
  tf.train.load_checkpoint(os.path.join(tmp_path, "checkpoints")).get_tensor(
      "steps_done/.ATTRIBUTES/VARIABLE_VALUE")  # still loads


def test_data_files_that_vanish_mid_run_are_named_and_the_checkpoint_kept(tmp_path, data_dir):
  source = sorted(glob.glob(f"{data_dir}/*/train-*"))[0]  # one shard: an epoch of 32 steps
  train_dir = tmp_path / "data"
  train_dir.mkdir()
  copy = str(train_dir / os.path.basename(source))
  shutil.copy(source, copy)
  evaluation = sorted(glob.glob(f"{data_dir}/*/eval-*"))[0]
  trainer = _Trainer(tmp_path / "model", data_dir, [
      "--data_source=criteo", "--table_sizes=1000", f"--train_files={copy}",
      f"--eval_files={evaluation}"
  ])
  trainer.wait_for("step 10/120")
  os.remove(copy)  # read again at the next epoch
  log = trainer.finish()
  assert trainer.process.returncode != 0
  assert "training stopped at step" in log and "NotFoundError" in log and copy in log
  stopped_at = _latest_step(str(tmp_path / "model"))
  assert stopped_at >= 10 and "The last complete checkpoint is" in log
  tf.train.load_checkpoint(os.path.join(tmp_path, "model", "checkpoints"))


if __name__ == "__main__":
  pytest_main.main(__file__)
