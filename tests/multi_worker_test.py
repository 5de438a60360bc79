"""make_train_step under a real 2-process MultiWorkerMirroredStrategy equals one device.

Two worker processes on localhost (TF_CONFIG with free ports, one CPU device each) run
tests/multi_worker_program.py: each takes its half of every global batch (auto-sharding by
DATA) and the gradients are all-reduced over gRPC. After 20 steps the chief's weights must
match a single-device run of the same program on the same global batches (run in a third
process, so that no TensorFlow state of this process or of other tests is involved), and the
two workers' weights must be identical. The trainers' worker helpers must count the two
workers, name worker 0 the chief and agree on a flag raised by worker 1 alone. This process
does not import TensorFlow.
"""

import ctypes
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from tests import local_cluster
from tests import multi_worker_program  # its constants only: TensorFlow loads in main()
from tests import pytest_main

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROGRAM = os.path.join(REPO_ROOT, "tests", "multi_worker_program.py")
NUM_WORKERS = 2
STEPS = multi_worker_program.STEPS
TIMEOUT_SECONDS = 240


def _die_with_parent():
  """In the child: SIGKILL it when this test process dies, however it dies (Linux)."""
  libc = ctypes.CDLL(None, use_errno=True)
  libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


class _Process:
  """A child running PROGRAM, its stdout and stderr going to files in `directory`."""

  def __init__(self, name, directory, mode, env):
    self.name = name
    self.output = str(directory / f"{name}.npz")
    self.stdout_path = str(directory / f"{name}.stdout.txt")
    self.stderr_path = str(directory / f"{name}.stderr.txt")
    with open(self.stdout_path, "wb") as stdout, open(self.stderr_path, "wb") as stderr:
      self.popen = subprocess.Popen(
          [sys.executable, PROGRAM, f"--mode={mode}", f"--output={self.output}"], env=env,
          cwd=str(directory), stdin=subprocess.DEVNULL, stdout=stdout, stderr=stderr,
          preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None)

  def kill(self):
    if self.popen.poll() is None:
      self.popen.kill()
    self.popen.wait()

  def report(self, tail_chars=4000):

    def tail(path):
      try:
        with open(path, "rb") as f:
          f.seek(0, os.SEEK_END)
          f.seek(max(0, f.tell() - tail_chars))
          return f.read().decode("utf-8", "replace")
      except OSError as e:
        return f"<{e}>"

    code = self.popen.poll()
    status = "still running (killed)" if code is None else f"exit code {code}"
    return (f"---- {self.name}: {status}\n"
            f"-- stdout ({self.stdout_path}):\n{tail(self.stdout_path)}\n"
            f"-- stderr tail ({self.stderr_path}):\n{tail(self.stderr_path)}\n")


class _Terminated(Exception):
  pass


def _raise_terminated(signum, frame):
  del frame
  raise _Terminated(f"signal {signum}")


def _wait_all(processes, timeout):
  """Waits until all exit; stops early when one fails (the other would wait for it)."""
  deadline = time.monotonic() + timeout
  while True:
    codes = [p.popen.poll() for p in processes]
    failed = [p.name for p, code in zip(processes, codes) if code not in (None, 0)]
    if failed:
      return f"{', '.join(failed)} failed"
    if all(code == 0 for code in codes):
      return None
    if time.monotonic() > deadline:
      running = [p.name for p, code in zip(processes, codes) if code is None]
      return f"timed out after {timeout} s waiting for {', '.join(running)}"
    time.sleep(0.2)


COMPILERS = multi_worker_program.FIT_COMPILERS


def _load(path):
  with np.load(path) as data:
    count = len([k for k in data.files if k.startswith("final_")])
    return {
        "initial": [data[f"initial_{i}"] for i in range(count)],
        "final": [data[f"final_{i}"] for i in range(count)],
        "losses": data["losses"],
        **{c: [data[f"{c}_{i}"] for i in range(count)] for c in COMPILERS},
        "info": json.loads(str(data["info"])),
    }


def _run(tmp_path):
  """Starts the two workers and the single-device reference; returns them when all exit 0."""
  envs = local_cluster.worker_envs(NUM_WORKERS)
  processes = []
  previous_handler = signal.signal(signal.SIGTERM, _raise_terminated)
  try:
    for index, env in enumerate(envs):
      processes.append(_Process(f"worker{index}", tmp_path, "multi_worker", env))
    processes.append(_Process("single", tmp_path, "single", local_cluster.base_env()))
    problem = _wait_all(processes, TIMEOUT_SECONDS)
    if problem:
      pytest.fail(
          f"{problem}; TF_CONFIG {envs[0]['TF_CONFIG']}\n" + "".join(p.report() for p in processes),
          pytrace=False)
    return processes, [_load(p.output) for p in processes]
  finally:
    for process in processes:
      process.kill()
    signal.signal(signal.SIGTERM, previous_handler)


@pytest.fixture(name="runs", scope="module")
def _runs(tmp_path_factory):
  """One run of the three processes for all the tests."""
  return _run(tmp_path_factory.mktemp("multi_worker"))


def test_multi_worker_training_equals_single_device(runs):
  processes, (chief, worker1, single) = runs
  logs = "".join(p.report(tail_chars=1500) for p in processes)

  for run in (chief, worker1):
    info = run["info"]
    assert info["plan"] == "replica_programs", info
    assert info["num_replicas"] == NUM_WORKERS, info
    assert info["iterations"] == [STEPS], info
    assert info["physical_cpus"] == 1, info
    assert len(info["replica_devices"]) == 1, info  # one replica, on this process's CPU
    assert info["replica_devices"][0].endswith("/device:CPU:0"), info
    assert info["variable_types"] == ["MirroredVariable"], info
  assert single["info"]["plan"] == "single_program", single["info"]
  for run, index in ((chief, 0), (worker1, 1)):
    assert run["info"]["num_workers"] == NUM_WORKERS, run["info"]
    assert run["info"]["worker_index"] == index, run["info"]
    assert run["info"]["any_worker"] is True, run["info"]
  assert single["info"]["num_workers"] == 1, single["info"]
  assert single["info"]["worker_index"] == 0 and single["info"]["any_worker"] is False
  assert single["info"]["iterations"] == [STEPS], single["info"]

  # Every process built the same initial weights (the seed works), so any difference at the
  # end comes from training.
  for run in (chief, worker1):
    for i, (got, want) in enumerate(zip(run["initial"], single["initial"])):
      np.testing.assert_array_equal(got, want, err_msg=f"initial weights differ: var {i}")

  # Training moved every variable, so the comparisons below can fail.
  for i, (initial, final) in enumerate(zip(single["initial"], single["final"])):
    assert np.abs(final - initial).max() > 1e-2, f"variable {i} barely changed"
  assert single["losses"][-5:].mean() < single["losses"][:5].mean(), single["losses"]

  # The workers applied the same all-reduced gradients: bit-identical weights.
  assert len(chief["final"]) == len(worker1["final"]) == len(single["final"]) == 4
  for i, (a, b) in enumerate(zip(chief["final"], worker1["final"])):
    np.testing.assert_array_equal(a, b, err_msg=f"workers differ: var {i}\n{logs}")

  # The chief equals the single-device run on the same global batches.
  for i, (got, want) in enumerate(zip(chief["final"], single["final"])):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7,
                               err_msg=f"multi-worker vs single device: var {i}\n{logs}")
  # The step's loss is the global batch mean, on every worker.
  for run in (chief, worker1):
    np.testing.assert_allclose(run["losses"], single["losses"], rtol=1e-5)


def test_keras_fit_multi_worker_equals_single_device(runs):
  """fit with an adam_xla.Adam, after adam_xla.compile_model and after model.compile."""
  processes, (chief, worker1, single) = runs
  logs = "".join(p.report(tail_chars=1500) for p in processes)
  assert single["info"]["compile_model"]["plan"] == "single_program", single["info"]
  for run in (chief, worker1):
    assert run["info"]["compile_model"]["plan"] == "replica_programs", run["info"]
  for compiler in multi_worker_program.FIT_COMPILERS:
    if compiler == "compile" and "error" in chief["info"][compiler]:
      # Keras 3's own fit under MultiWorkerMirroredStrategy (keras-team/keras#20585): it
      # reduces a tuple of per-replica batches, which this strategy cannot do.
      assert "PerReplica" in chief["info"][compiler]["error"], chief["info"]
      continue
    for run in (chief, worker1, single):
      assert run["info"][compiler]["iterations"] == STEPS, run["info"]
    for i, (initial, final) in enumerate(zip(single["initial"], single[compiler])):
      assert np.abs(final - initial).max() > 1e-2, f"{compiler}: variable {i} barely changed"
    for i, (a, b) in enumerate(zip(chief[compiler], worker1[compiler])):
      np.testing.assert_array_equal(a, b, err_msg=f"{compiler}: workers differ: var {i}\n{logs}")
    for i, (got, want) in enumerate(zip(chief[compiler], single[compiler])):
      np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7,
                                 err_msg=f"{compiler}: multi-worker vs single: var {i}\n{logs}")
    # Keras' fit on the same batches as make_train_step: the same weights.
    for i, (got, want) in enumerate(zip(single[compiler], single["final"])):
      np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7,
                                 err_msg=f"{compiler} vs make_train_step: var {i}")
    # Every worker's History (what callbacks see) is the global one.
    for run in (chief, worker1):
      for key, values in single["info"][compiler]["history"].items():
        np.testing.assert_allclose(run["info"][compiler]["history"][key], values, rtol=1e-5,
                                   err_msg=f"{compiler}: History {key}")


if __name__ == "__main__":
  pytest_main.main(__file__)
