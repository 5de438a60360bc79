"""Runs a function in a fresh Python process, for work that must not share this one's state.

TensorFlow fixes its logical devices when it first initialises them, so a run on N logical
CPUs needs a process of its own; so does a figure of peak memory, an HLO dump of one
variant's programs, and a suite whose allocations must not slow the next one.

    report = child.call("tools.bench.step:run_groups", config, groups, logical_cpus=4)

The function is named rather than pickled, so the caller need not import its module (nor
TensorFlow with it); arguments and result travel as pickles through a temporary directory.
The child has this process's import path, so it runs the same from a checkout and from
Bazel's runfiles.
"""

import importlib
import os
import pickle
import signal
import subprocess
import sys
import tempfile


class ChildFailed(RuntimeError):
  """The child exited without a result; the message says how, with its last error line."""

  def __init__(self, message, exit_code=None):
    super().__init__(message)
    self.exit_code = exit_code


def environment():
  """This environment, with PYTHONPATH = this process's import path."""
  path = [os.path.abspath(entry) if entry else os.getcwd() for entry in sys.path]
  return dict(os.environ, PYTHONPATH=os.pathsep.join(dict.fromkeys(path)))


def describe_exit(code):
  if code < 0:
    try:
      return f"killed by {signal.Signals(-code).name}"
    except ValueError:
      return f"killed by signal {-code}"
  return f"exit code {code}"


def call(target, *args, logical_cpus=None, quiet=False, timeout=None):
  """target(*args) ("module:function") in a child process on `logical_cpus` logical CPU
  devices (None: TensorFlow's default); its result.

  With `quiet` the child's output is kept, and only its last error line is reported if it
  fails; otherwise it goes to this process's terminal as it runs. Raises ChildFailed.
  """
  with tempfile.TemporaryDirectory(prefix="adam_xla_child_") as directory:
    with open(os.path.join(directory, "call.pickle"), "wb") as f:
      pickle.dump((target, args, logical_cpus), f)
    sys.stdout.flush()
    sys.stderr.flush()
    output = subprocess.PIPE if quiet else None
    try:
      done = subprocess.run([sys.executable, "-m", __name__, directory], env=environment(),
                            stdout=output, stderr=output, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
      raise ChildFailed(f"{target} timed out after {timeout} s") from None
    result = os.path.join(directory, "result.pickle")
    if done.returncode == 0 and os.path.exists(result):
      with open(result, "rb") as f:
        return pickle.load(f)
  lines = (done.stderr or "").strip().splitlines()
  if done.returncode == 0:
    raise ChildFailed("exited 0 without a result", 0)
  raise ChildFailed(
      describe_exit(done.returncode) + (f": {lines[-1][:300]}" if lines else ""), done.returncode)


def split_cpu(logical_cpus):
  """Splits the CPU into logical devices; only before anything initialises TensorFlow's."""
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  cpu = tf.config.list_physical_devices("CPU")[0]
  tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] *
                                             logical_cpus)


def main(directory):
  with open(os.path.join(directory, "call.pickle"), "rb") as f:
    target, args, logical_cpus = pickle.load(f)
  if logical_cpus:
    split_cpu(logical_cpus)  # before anything initialises TensorFlow's devices
  module, function = target.split(":")
  result = getattr(importlib.import_module(module), function)(*args)
  with open(os.path.join(directory, "result.pickle"), "wb") as f:
    pickle.dump(result, f)


if __name__ == "__main__":
  main(sys.argv[1])
