"""Sharded Adam state under a real 2-process MultiWorkerMirroredStrategy.

A checkpoint written by this process (one device, no strategy) is restored into 2 workers
with sharded state and into 2 workers with mirrored state (tests/sharded_state_program.py),
which train 20 steps and save. Sharded must equal mirrored bit for bit (the same all-reduced
gradients, the same arithmetic), on both workers; each worker must hold half of the state;
and the sharded workers' checkpoint must restore into one process with the slots they read.
"""

import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

import adam_xla
from tests import local_cluster
from tests import pytest_main
from tests import sharded_state_program as program

PROGRAM = os.path.join(local_cluster.REPO_ROOT, "tests", "sharded_state_program.py")
TIMEOUT_SECONDS = 300


def _run_cluster(directory, shard_state, restore):
  """Runs 2 workers to the end; returns each worker's arrays."""
  outputs = [str(directory / f"worker_{i}.npz") for i in range(2)]
  processes = []
  for index, env in enumerate(local_cluster.worker_envs(2)):
    log = open(directory / f"worker_{index}.log", "wb")  # pylint: disable=consider-using-with
    processes.append((subprocess.Popen([
        sys.executable, PROGRAM, f"--shard_state={int(shard_state)}", f"--restore={restore}",
        f"--checkpoint_dir={directory / 'ckpt'}", f"--output={outputs[index]}"
    ], env=env, stdout=log, stderr=subprocess.STDOUT), log))
  try:
    for process, log in processes:
      process.wait(timeout=TIMEOUT_SECONDS)
      log.close()
  finally:
    for process, _ in processes:
      if process.poll() is None:
        process.kill()
  for index, (process, _) in enumerate(processes):
    if process.returncode != 0:
      with open(directory / f"worker_{index}.log", "rb") as f:
        tail = f.read()[-4000:].decode("utf-8", "replace")
      pytest.fail(f"worker {index} exited with {process.returncode}:\n{tail}")
  return [dict(np.load(path)) for path in outputs]


def _initial_checkpoint(directory):
  """One process's checkpoint after 3 steps (a process of its own: Keras names its layers,
  and so the slots' keys, per process), and its slots."""
  output = directory / "initial.npz"
  subprocess.run(
      [sys.executable, PROGRAM, "--initial", f"--checkpoint_dir={directory}", f"--output={output}"],
      env=local_cluster.base_env(), check=True, timeout=TIMEOUT_SECONDS, stdout=subprocess.DEVNULL,
      stderr=subprocess.DEVNULL)
  slots = {k[len("slot_"):]: v for k, v in np.load(output).items()}
  return str(directory / "ckpt"), slots


def test_sharded_equals_mirrored_on_two_workers_and_checkpoints_move(tmp_path):
  (tmp_path / "initial").mkdir()
  initial_path, initial_slots = _initial_checkpoint(tmp_path / "initial")
  runs = {}
  for shard_state in (False, True):
    directory = tmp_path / f"shard_{int(shard_state)}"
    directory.mkdir()
    runs[shard_state] = _run_cluster(directory, shard_state, initial_path)
  for workers in runs.values():
    for worker in workers:  # one process's checkpoint restored into 2 workers, either layout
      for key, value in initial_slots.items():
        np.testing.assert_array_equal(worker[f"restored_{key}"], value, err_msg=key)
      assert int(worker["iterations"]) == 3 + program.STEPS
  mirrored, sharded = runs[False][0], runs[True][0]
  for key in mirrored:
    if key.startswith(("weight_", "slot_")):
      for worker in runs[False] + runs[True]:  # every worker, either layout: the same bits
        np.testing.assert_array_equal(worker[key], mirrored[key], err_msg=key)
  parameters = sum(v.size for k, v in mirrored.items() if k.startswith("weight_"))
  assert int(mirrored["state_bytes"]) == parameters * 8
  # Half each, the shards ending on rows within a row (33 elements) of the middle.
  assert parameters * 4 <= int(sharded["state_bytes"]) < (-(-parameters // 2) + 33) * 8
  # The 2 sharded workers' checkpoint into one process: the slots they read.
  model, optimizer = program.model_and_optimizer(keras, adam_xla, True)
  tf.train.Checkpoint(model=model,
                      optimizer=optimizer).restore(str(tmp_path / "shard_1" / "ckpt" / "ckpt"))
  optimizer.build(model.trainable_variables)
  for i, v in enumerate(model.trainable_variables):
    np.testing.assert_array_equal(v.numpy(), sharded[f"weight_{i}"])
  for key, value in program.slot_values(model, optimizer).items():
    np.testing.assert_array_equal(value, sharded[f"slot_{key}"], err_msg=key)


if __name__ == "__main__":
  pytest_main.main(__file__)
