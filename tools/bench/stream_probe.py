"""The machine's memory bandwidth for native code on every core: the reference of Adam's floor.

stream_probe.cc streams four float32 arrays (p, g, m, v) of `megabytes` / 4 each, reading all
four and writing p, m and v in place: Adam's 28 bytes per element, one thread per usable core
on a contiguous chunk. It is compiled on first use with the machine's g++ (-O3, -mavx2 where
the CPU has it) and cached like adam_xla's CPU kernel: $ADAM_XLA_CACHE_DIR, else
$XDG_CACHE_HOME/adam_xla or ~/.cache/adam_xla, else the temporary directory.
"""

import ctypes
import functools
import hashlib
import math
import os
import platform
import shutil
import subprocess
import tempfile
import time

import numpy as np

from tools.bench import machine

BYTES_PER_ELEMENT = 28  # read p, g, m, v; write p, m, v (float32)
_SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "stream_probe.cc")


def _cache_directories():
  if os.environ.get("ADAM_XLA_CACHE_DIR"):
    return [os.environ["ADAM_XLA_CACHE_DIR"]]
  cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
  return [
      os.path.join(cache, "adam_xla"),
      os.path.join(tempfile.gettempdir(), f"adam_xla-{os.getuid()}")
  ]


@functools.cache
def _library():
  """The compiled probe, built once per source, compiler and flags (to a temporary name,
  then renamed: a concurrent build never sees half a file)."""
  compiler = shutil.which(os.environ.get("CXX", "")) or shutil.which("g++") or shutil.which("c++")
  if compiler is None:
    raise RuntimeError(f"no C++ compiler for {_SOURCE} (set CXX or install g++)")
  with open("/proc/cpuinfo", encoding="ascii", errors="replace") as cpuinfo:
    avx2 = any(line.startswith("flags") and "avx2" in line.split() for line in cpuinfo)
  flags = ["-O3", "-shared", "-fPIC", "-std=c++17", "-pthread"] + (["-mavx2"] if avx2 else [])
  with open(_SOURCE, "rb") as source:
    key = hashlib.sha256(source.read() +
                         " ".join([compiler, platform.machine()] + flags).encode()).hexdigest()[:16]
  errors = []
  for directory in _cache_directories():
    path = os.path.join(directory, f"stream_probe-{key}.so")
    try:
      if not os.path.exists(path):
        os.makedirs(directory, exist_ok=True)
        fd, partial = tempfile.mkstemp(suffix=".so", dir=directory)
        os.close(fd)
        try:
          built = subprocess.run([compiler] + flags + [_SOURCE, "-o", partial], capture_output=True,
                                 text=True, check=False)
          if built.returncode:
            raise RuntimeError(f"compiling {_SOURCE} failed:\n{built.stderr[-2000:]}")
          os.replace(partial, path)
        finally:
          if os.path.exists(partial):
            os.remove(partial)
      lib = ctypes.CDLL(path)  # its calls release the GIL
      break
    except OSError as error:  # a read-only directory, say: the next one
      errors.append(f"{directory}: {error}")
  else:
    raise RuntimeError(f"cannot build {_SOURCE}: " + "; ".join(errors))
  lib.stream_probe_create.restype = ctypes.c_void_p
  lib.stream_probe_create.argtypes = [ctypes.c_int64, ctypes.c_int]
  lib.stream_probe_run.argtypes = [ctypes.c_void_p, ctypes.c_int]
  lib.stream_probe_array.restype = ctypes.POINTER(ctypes.c_float)
  lib.stream_probe_array.argtypes = [ctypes.c_void_p, ctypes.c_int]
  lib.stream_probe_free.argtypes = [ctypes.c_void_p]
  return lib


class StreamProbe:
  """`megabytes` (2^20 B) in four float32 arrays, streamed by `threads` native threads (default
  one per usable core); run(passes) returns when every thread has done them."""

  _handle = None

  def __init__(self, megabytes, threads=None):
    self._lib = _library()
    self.megabytes, self.threads = megabytes, threads or machine.usable_cores()
    self.elements = max(megabytes * 2**20 // 16, 1)
    self.bytes_per_pass = BYTES_PER_ELEMENT * self.elements
    self._handle = self._lib.stream_probe_create(self.elements, self.threads)
    if not self._handle:
      raise MemoryError(f"stream probe: cannot allocate {megabytes} MB")

  def run(self, passes):
    self._lib.stream_probe_run(self._handle, passes)

  def array(self, k):
    """A view of array k (0: p, 1: g, 2: m, 3: v); valid until close()."""
    return np.ctypeslib.as_array(self._lib.stream_probe_array(self._handle, k), (self.elements,))

  def close(self):
    if self._handle:
      self._lib.stream_probe_free(self._handle)
      self._handle = None

  __del__ = close


class ProbeVariant(StreamProbe):
  """The probe as one of a suite's timed variants, so that the bandwidth an update is held
  against is measured in the same rounds, under the same load, as the update.

  A round is whole passes, at least 3 and about 0.2 s (like one round of an update, and above
  the 0.1 s the CPU meter needs); one untimed pass and a short timing fix the count.
  """

  kind = "probe"
  steps_per_call = 1
  seconds_per_round = 0.2

  def __init__(self, megabytes):
    super().__init__(megabytes)
    super().run(1)
    start = time.perf_counter()
    super().run(3)
    self.passes_per_round = max(
        3, math.ceil(self.seconds_per_round * 3 / (time.perf_counter() - start)))

  def gbps(self, ms_per_pass):
    return self.bytes_per_pass / (ms_per_pass * 1e6)

  def bytes_per_step(self):
    return self.bytes_per_pass

  def state_bytes(self):
    return 0
