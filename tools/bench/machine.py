"""What a benchmark ran on, and how busy the machine was while it ran.

Every figure is recorded beside the machine, environment and command that produced it; every
timed run beside the share of the CPUs that other processes used, because on a shared 2-core
machine a busy neighbour slows whatever it overlaps and a noisy round must be recognisable.
"""

import os
import platform
import time

# Environment variables that change how TensorFlow and XLA run on CPU; recorded when set.
ENV_VARS = ("TF_CPU_ALLOCATOR_USE_BFC", "TF_XLA_FLAGS", "XLA_FLAGS", "TF_ENABLE_ONEDNN_OPTS",
            "TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS", "OMP_NUM_THREADS",
            "TF_CPP_MIN_LOG_LEVEL")


def _lines(path):
  try:
    with open(path) as f:
      return f.read().splitlines()
  except OSError:
    return []


def usable_cores():
  return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def machine_info(libraries=True):
  """CPU, cores, last-level cache, memory, Python; with `libraries` also the versions of
  TensorFlow, Keras and NumPy (imported here) and the set variables of ENV_VARS."""
  cpu = next((line.split(":", 1)[1].strip()
              for line in _lines("/proc/cpuinfo") if line.startswith("model name")),
             platform.processor() or platform.machine())
  memory_kib = next(
      (line.split()[1] for line in _lines("/proc/meminfo") if line.startswith("MemTotal:")), None)
  cache = _lines("/sys/devices/system/cpu/cpu0/cache/index3/size")
  info = {
      "cpu": cpu or "unknown", "logical_cores": os.cpu_count(), "usable_cores": usable_cores(),
      "last_level_cache": cache[0].strip() if cache else "unknown",
      "memory_gib": round(int(memory_kib) / 2**20, 1) if memory_kib else None,
      "python": platform.python_version(), "platform": platform.platform()
  }
  if libraries:
    import keras  # pylint: disable=import-outside-toplevel
    import numpy as np  # pylint: disable=import-outside-toplevel
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    info.update(tensorflow=tf.__version__, keras=keras.__version__, numpy=np.__version__,
                environment={k: os.environ[k] for k in ENV_VARS if k in os.environ})
  return info


def print_head(suite, info):
  """A suite's report head: its name, the machine and libraries, then the environment."""
  env = info.get("environment") or {}
  print(
      f"suite {suite}\nmachine: {info['cpu']}, {info['logical_cores']} logical cores "
      f"({info['usable_cores']} usable), last-level cache {info['last_level_cache']}, "
      f"{info['memory_gib']} GiB; Python {info['python']}, TensorFlow "
      f"{info.get('tensorflow')}, Keras {info.get('keras')}, NumPy {info.get('numpy')}\n"
      "environment (one process: applies to every variant alike): " + (", ".join(
          f"{k}={v}" for k, v in env.items()) if env else f"none of {', '.join(ENV_VARS)} set"),
      flush=True)


class CpuMeter:
  """Cores this process kept busy during a run, and the share of the machine others used."""

  def __init__(self):
    self._tick = os.sysconf("SC_CLK_TCK")
    self._cores = os.cpu_count() or 1

  def _machine_busy_seconds(self):
    try:
      with open("/proc/stat") as f:
        fields = [int(v) for v in f.readline().split()[1:9]]
    except (OSError, ValueError):
      return None
    user, nice, system, _, _, irq, softirq, steal = fields
    return (user + nice + system + irq + softirq + steal) / self._tick

  def start(self):
    t = os.times()
    return time.perf_counter(), t.user + t.system, self._machine_busy_seconds()

  def stop(self, started, child_cpu_seconds=0.0):
    """(wall seconds, cores used by this process, other processes' share of all cores).

    `child_cpu_seconds`: CPU time of a helper process of ours (a peer's), counted as this
    process's rather than as other load. CPU times come in 10 ms ticks, so the shares are None
    for runs shorter than 0.1 s.
    """
    wall0, own0, busy0 = started
    wall = time.perf_counter() - wall0
    t = os.times()
    own = t.user + t.system - own0 + child_cpu_seconds
    busy = self._machine_busy_seconds()
    if wall < 0.1:
      return wall, None, None
    other = None
    if busy is not None and busy0 is not None:
      other = min(max((busy - busy0 - own) / (wall * self._cores), 0.0), 1.0)
    return wall, own / wall, other


def format_share(share):
  """A share of the CPUs as a percentage; "?" when it was not measured (runs under 0.1 s)."""
  return "?" if share is None else f"{share:.0%}"
