"""Runs one command as N workers of a MultiWorkerMirroredStrategy cluster on this machine.

    ./bazelw run //tools:local_workers -- --num_workers=2 -- \\
        python -m trainers.image_classification.main --strategy=multi_worker --model_dir=/tmp/r

Everything after the `--` that follows the launcher's flags is the command, run once per
worker in the directory the launcher was started from. Worker i gets a TF_CONFIG naming every
worker on free 127.0.0.1 ports (task "worker", index i), no GPUs (or its own with
--gpus_per_worker) and unbuffered Python output; its stdout and stderr lines are prefixed
"[worker i] ".

Signals: SIGINT (Ctrl-C) and SIGTERM to the launcher are passed on to every running worker,
once per signal received, so the trainers finish the step in flight and write their checkpoint;
a second Ctrl-C stops them at once, as it does a trainer run alone. Workers run in process
groups of their own, so that a Ctrl-C in the terminal reaches them once, through the launcher.
A worker that fails (any exit status but 0 and 75, the trainers' "stopped by a signal,
checkpoint written") leaves the others unable to finish (their next all-reduce fails or waits
for it): they get SIGTERM, and SIGKILL after --grace_seconds. If the launcher itself is killed,
the workers are killed with it (Linux), rather than left waiting for each other.

The launcher exits with worker 0's (the chief's) exit status, 128 + N if it was killed by
signal N.
"""

import ctypes
import dataclasses
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from typing import Optional, Tuple

from absl import app
from absl import flags

from tools import cluster_env

# The trainers' exit status after a SIGTERM/SIGINT and a checkpoint (trainers/common/
# training_loop.py's INTERRUPTED_EXIT_CODE): every worker stops at the same step, so a worker
# exiting with it is not a failure that strands the others.
INTERRUPTED_EXIT_CODE = 75
LAUNCHER_PREFIX = "[local_workers] "
_POLL_SECONDS = 0.05
# After the workers exit, how long their output may still take to drain (a grandchild that
# inherited a pipe could hold it open forever).
_DRAIN_SECONDS = 5.0

_NUM_WORKERS = flags.DEFINE_integer("num_workers", 2, "Worker processes to start (>= 1).")
_GPUS_PER_WORKER = flags.DEFINE_integer(
    "gpus_per_worker", 0, "GPUs each worker sees (CUDA_VISIBLE_DEVICES): worker i gets GPUs "
    "i*k .. i*k+k-1; 0: none, CPU only.")
_GRACE_SECONDS = flags.DEFINE_float(
    "grace_seconds", 30.0, "When a worker fails, the seconds the others get between SIGTERM "
    "and SIGKILL (>= 0).")


@dataclasses.dataclass(frozen=True)
class LaunchConfig:
  """What to start and how: built once from the flags and the environment, then validated."""

  num_workers: int
  gpus_per_worker: int
  grace_seconds: float
  command: Tuple[str, ...]
  working_dir: str  # where the user started the launcher (Bazel runs it elsewhere)
  python_path: Tuple[str, ...]  # first on the workers' PYTHONPATH: the repo's sources

  def validate(self):
    """Returns self, or raises ValueError naming the flag, its value and what is accepted."""
    _check(self.num_workers >= 1, "num_workers", self.num_workers, "an integer >= 1")
    _check(self.gpus_per_worker >= 0, "gpus_per_worker", self.gpus_per_worker,
           "an integer >= 0 (0: CPU only)")
    _check(self.grace_seconds >= 0, "grace_seconds", self.grace_seconds, "a number >= 0")
    if not self.command:
      raise ValueError("no command: put the program to run after `--`, e.g. "
                       "local_workers --num_workers=2 -- python -m trainers.ctr.main ...")
    if _executable(self.command[0], self.working_dir) is None:
      raise ValueError(f"the command after `--`, {self.command[0]!r}, is not an executable "
                       f"file or on PATH.")
    return self


def _check(ok, flag, value, accepted):
  if not ok:
    raise ValueError(f"--{flag}={value!r} is not valid: expected {accepted}.")


def _executable(program, working_dir):
  """The path `program` runs as (a path, or a name looked up on PATH), or None."""
  if os.sep in program:
    path = os.path.join(working_dir, program)
    return path if os.path.isfile(path) and os.access(path, os.X_OK) else None
  return shutil.which(program)


def _repo_root():
  """The sources the workers import: under `bazel run` the workspace itself (its runfiles
  hold the launcher alone), else the checkout this file is in."""
  return (os.environ.get("BUILD_WORKSPACE_DIRECTORY") or
          os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def config_from_flags(command):
  return LaunchConfig(num_workers=_NUM_WORKERS.value, gpus_per_worker=_GPUS_PER_WORKER.value,
                      grace_seconds=_GRACE_SECONDS.value, command=tuple(command),
                      working_dir=os.environ.get("BUILD_WORKING_DIRECTORY") or os.getcwd(),
                      python_path=(_repo_root(),))


# ---- Command line --------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Arguments:
  """The command line split at `--`: stray words before it, and the command (None: no `--`)."""

  stray: Tuple[str, ...]
  command: Optional[Tuple[str, ...]]


def _parse_flags(argv):
  """absl's flags from the words before the first `--`; the rest is the command, untouched.

  Without a `--`, flags are read up to the first word that is not one, so that a forgotten
  `--` is reported as such, not as an unknown flag of the command.
  """
  words = argv[1:]
  if "--" in words:
    split = words.index("--")
    flag_words, command = words[:split], tuple(words[split + 1:])
  else:
    split = next((i for i, word in enumerate(words) if not word.startswith("-")), len(words))
    flag_words, command = words[:split], None
  rest = app.parse_flags_with_usage([argv[0], *flag_words])
  stray = tuple(rest[1:]) + (tuple(words[split:]) if command is None else ())
  return _Arguments(stray=stray, command=command)


# ---- Workers -------------------------------------------------------------------------------


class _Output:
  """The launcher's stdout and stderr, shared line by line by the workers' relays."""

  def __init__(self):
    self._lock = threading.Lock()

  def write(self, sink, data):
    with self._lock:
      sink.write(data)
      sink.flush()

  def say(self, text):
    """A line of the launcher's own, on stderr."""
    self.write(sys.stderr.buffer, f"{LAUNCHER_PREFIX}{text}\n".encode())


def _relay(stream, sink, prefix, output):
  """Copies `stream` to `sink` a line at a time, each line after `prefix`."""
  with stream:
    for line in iter(stream.readline, b""):
      output.write(sink, prefix + (line if line.endswith(b"\n") else line + b"\n"))


def _die_with_launcher():
  """In a worker, before it runs the command: SIGKILL it when the launcher dies (Linux)."""
  if sys.platform.startswith("linux"):
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


class _Worker:
  """One worker process, its output relayed with its prefix."""

  def __init__(self, index, config, env):
    self.index = index
    self.process = subprocess.Popen(list(config.command), env=env, cwd=config.working_dir,
                                    stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, start_new_session=True,
                                    preexec_fn=_die_with_launcher)
    self._relays = []

  def relay_output(self, output):
    prefix = f"[worker {self.index}] ".encode()
    for stream, sink in ((self.process.stdout, sys.stdout.buffer), (self.process.stderr,
                                                                    sys.stderr.buffer)):
      relay = threading.Thread(target=_relay, args=(stream, sink, prefix, output), daemon=True)
      relay.start()
      self._relays.append(relay)

  @property
  def running(self):
    return self.process.poll() is None

  def signal(self, number):
    """Sends `number` to the worker's process group (its command and anything it started)."""
    try:
      os.killpg(self.process.pid, number)
    except ProcessLookupError:  # already gone
      pass

  def finish_output(self, deadline):
    for relay in self._relays:
      relay.join(max(0.0, deadline - time.monotonic()))


def _start_workers(config, output):
  """Starts every worker, or none: if one cannot start, those started are killed."""
  envs = cluster_env.worker_envs(config.num_workers, config.python_path,
                                 gpus_per_worker=config.gpus_per_worker)
  workers = []
  try:
    for index, env in enumerate(envs):
      workers.append(_Worker(index, config, env))
  except BaseException:
    for worker in workers:
      worker.signal(signal.SIGKILL)
      worker.process.wait()
    raise
  # Relays start only once every worker is forked: a fork while other threads run could
  # copy a lock one of them holds.
  for worker in workers:
    worker.relay_output(output)
  output.say(f"started {len(workers)} workers (TF_CONFIG worker 0: "
             f"{envs[0]['TF_CONFIG']}): {' '.join(config.command)}")
  return workers


def _is_failure(status):
  """Whether a worker's exit status means the others cannot finish without it."""
  return status not in (0, INTERRUPTED_EXIT_CODE)


def _shell_status(status):
  """A Popen return code as a shell reports it: 128 + N for death by signal N."""
  return 128 - status if status < 0 else status


class _Supervisor:
  """Watches the workers: passes signals on, and stops the rest when one fails."""

  def __init__(self, grace_seconds, output):
    self.workers = []  # set once they are started; signals received before wait for them
    self._grace = grace_seconds
    self._output = output
    self._exited = set()
    self._kill_at = None  # when the survivors of a failure get SIGKILL
    self._received = []  # signals to pass on

  def on_signal(self, number, frame):
    """Signal handler: notes the signal; `poll` passes it on (the handler may interrupt a
    write of the launcher's own, which holds the output lock)."""
    del frame
    self._received.append(number)

  def _forward(self, number):
    running = [w for w in self.workers if w.running]
    self._output.say(f"{signal.Signals(number).name}: passed on to "
                     f"{len(running)} running worker(s)")
    for worker in running:
      worker.signal(number)

  def done(self):
    return len(self._exited) == len(self.workers)

  def poll(self):
    """Passes signals on, notes exits, stops the others after a failure, and kills them when
    their time is up."""
    while self._received:
      self._forward(self._received.pop(0))
    for worker in self.workers:
      status = worker.process.poll()
      if status is None or worker.index in self._exited:
        continue
      self._exited.add(worker.index)
      if _is_failure(status) and self._kill_at is None:
        self._stop_others(worker, status)
    if self._kill_at is not None and time.monotonic() >= self._kill_at:
      for worker in self.workers:
        if worker.running:
          self._output.say(f"worker {worker.index} still running after --grace_seconds="
                           f"{self._grace:g}: SIGKILL")
          worker.signal(signal.SIGKILL)
      self._kill_at = float("inf")  # once

  def _stop_others(self, failed, status):
    running = [w for w in self.workers if w.running]
    if not running:
      return
    self._output.say(f"worker {failed.index} failed (exit status {_shell_status(status)}): "
                     f"SIGTERM to worker(s) {', '.join(str(w.index) for w in running)}, "
                     f"SIGKILL after {self._grace:g} s")
    for worker in running:
      worker.signal(signal.SIGTERM)
    self._kill_at = time.monotonic() + self._grace


def run(config):
  """Runs the workers to their end; returns the chief's exit status, shell style."""
  output = _Output()
  supervisor = _Supervisor(config.grace_seconds, output)
  previous = {
      number: signal.signal(number, supervisor.on_signal)
      for number in (signal.SIGINT, signal.SIGTERM)
  }
  try:
    workers = supervisor.workers = _start_workers(config, output)
    while not supervisor.done():
      supervisor.poll()
      time.sleep(_POLL_SECONDS)
  finally:
    for number, handler in previous.items():
      signal.signal(number, handler)
  deadline = time.monotonic() + _DRAIN_SECONDS
  for worker in workers:
    worker.finish_output(deadline)
  statuses = ", ".join(f"worker {w.index}: {_shell_status(w.process.returncode)}" for w in workers)
  output.say(f"all workers exited ({statuses})")
  return _shell_status(workers[0].process.returncode)


def main(arguments):
  if arguments.command is None:
    raise app.UsageError(f"put `--` between the launcher's flags and the command to run, as in: "
                         f"local_workers --num_workers=2 -- {' '.join(arguments.stray)}")
  if arguments.stray:
    raise app.UsageError(f"unexpected arguments before `--`: {list(arguments.stray)}")
  try:
    config = config_from_flags(arguments.command).validate()
  except ValueError as error:
    raise app.UsageError(str(error)) from None
  sys.exit(run(config))


if __name__ == "__main__":
  app.run(main, flags_parser=_parse_flags)
