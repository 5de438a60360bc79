"""What a benchmark ran on: the machine, the settings that change TensorFlow on CPU, the command.

Every benchmark tool records this next to its figures, so that a figure can be traced to the
machine and environment that produced it.
"""

import os
import platform
import shlex
import sys

# Environment variables that change how TensorFlow/XLA run on CPU; recorded when set.
ENV_VARS = ("TF_CPU_ALLOCATOR_USE_BFC", "TF_XLA_FLAGS", "XLA_FLAGS", "TF_ENABLE_ONEDNN_OPTS",
            "TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS", "OMP_NUM_THREADS",
            "TF_CPP_MIN_LOG_LEVEL")


def _lines(path):
  try:
    with open(path) as f:
      return f.read().splitlines()
  except OSError:
    return []


def machine_info(libraries=True):
  """CPU, cores, last-level cache, memory, Python; with `libraries`, also the versions of
  TensorFlow, Keras and NumPy (imported here) and the environment variables of ENV_VARS."""
  cpu = next((line.split(":", 1)[1].strip() for line in _lines("/proc/cpuinfo")
              if line.startswith("model name")), platform.processor() or platform.machine())
  memory_kib = next((line.split()[1] for line in _lines("/proc/meminfo")
                     if line.startswith("MemTotal:")), None)
  try:
    usable = len(os.sched_getaffinity(0))
  except AttributeError:
    usable = os.cpu_count()
  cache = _lines("/sys/devices/system/cpu/cpu0/cache/index3/size")
  info = {"cpu": cpu or "unknown", "logical_cores": os.cpu_count(), "usable_cores": usable,
          "last_level_cache": cache[0].strip() if cache else "unknown",
          "memory_gib": round(int(memory_kib) / 2**20, 1) if memory_kib else None,
          "python": platform.python_version(), "platform": platform.platform()}
  if libraries:
    import keras  # pylint: disable=g-import-not-at-top
    import numpy as np  # pylint: disable=g-import-not-at-top
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    info.update(tensorflow=tf.__version__, keras=keras.__version__, numpy=np.__version__,
                environment={k: os.environ[k] for k in ENV_VARS if k in os.environ})
  return info


def command_line():
  """This process's command line, quoted for a shell."""
  return " ".join(shlex.quote(a) for a in [sys.executable] + sys.argv)
