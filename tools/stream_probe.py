"""The machine's memory bandwidth for native code on every core: the reference for Adam's floor.

stream_probe.cc streams four float32 arrays (p, g, m, v) of `megabytes` / 4 each, reading all
four and writing p, m and v in place (x = x / 2 + g): Adam's 28 bytes per element, with one
thread per usable core on a contiguous chunk. It is compiled on first use with the machine's
g++ (-O3, -mavx2 where /proc/cpuinfo has it; a second or two) and cached like adam_xla's CPU
kernel: $ADAM_XLA_CACHE_DIR, else ~/.cache/adam_xla (or $XDG_CACHE_HOME/adam_xla), else the
temporary directory. No TensorFlow.
"""

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile

import numpy as np

BYTES_PER_ELEMENT = 28  # read p, g, m, v; write p, m, v (float32)
_SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "stream_probe.cc")
_library = []


def usable_cores():
  return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def _flags():
  with open("/proc/cpuinfo", encoding="ascii", errors="replace") as cpuinfo:
    avx2 = any(line.startswith("flags") and "avx2" in line.split() for line in cpuinfo)
  return ["-O3", "-shared", "-fPIC", "-std=c++17", "-pthread"] + (["-mavx2"] if avx2 else [])


def _load():
  """The compiled library (built once per source, compiler and flags; cached)."""
  if _library:
    return _library[0]
  compiler = shutil.which(os.environ.get("CXX", "")) or shutil.which("g++") or shutil.which("c++")
  if compiler is None:
    raise RuntimeError("no C++ compiler found for tools/stream_probe.cc (set CXX or install g++)")
  flags = _flags()
  with open(_SOURCE, "rb") as source:
    key = hashlib.sha256(source.read() + " ".join([compiler, platform.machine()] + flags).encode())
  cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
  dirs = ([os.environ["ADAM_XLA_CACHE_DIR"]] if os.environ.get("ADAM_XLA_CACHE_DIR") else
          [os.path.join(cache, "adam_xla"),
           os.path.join(tempfile.gettempdir(), f"adam_xla-{os.getuid()}")])
  errors = []
  for directory in dirs:
    path = os.path.join(directory, f"stream_probe-{key.hexdigest()[:16]}.so")
    try:
      if not os.path.exists(path):
        os.makedirs(directory, exist_ok=True)
        fd, partial = tempfile.mkstemp(suffix=".so", dir=directory)
        os.close(fd)
        try:  # compile to a temporary name and rename: concurrent builds never see half a file
          result = subprocess.run([compiler] + flags + [_SOURCE, "-o", partial],
                                  capture_output=True, text=True, check=False)
          if result.returncode:
            raise RuntimeError(f"compiling {_SOURCE} failed:\n{result.stderr[-2000:]}")
          os.replace(partial, path)
        finally:
          if os.path.exists(partial):
            os.remove(partial)
      lib = ctypes.CDLL(path)  # its calls release the GIL
      break
    except OSError as error:  # e.g. a read-only directory: try the next one
      errors.append(f"{directory}: {error}")
  else:
    raise RuntimeError("cannot build tools/stream_probe.cc: " + "; ".join(errors))
  lib.stream_probe_create.restype = ctypes.c_void_p
  lib.stream_probe_create.argtypes = [ctypes.c_int64, ctypes.c_int]
  lib.stream_probe_run.argtypes = [ctypes.c_void_p, ctypes.c_int]
  lib.stream_probe_array.restype = ctypes.POINTER(ctypes.c_float)
  lib.stream_probe_array.argtypes = [ctypes.c_void_p, ctypes.c_int]
  lib.stream_probe_free.argtypes = [ctypes.c_void_p]
  _library.append(lib)
  return lib


class StreamProbe:
  """`megabytes` (MB = 2^20 B) in four float32 arrays, streamed by `threads` native threads
  (default: one per usable core). run(passes) returns when every thread has done them."""

  _handle = None

  def __init__(self, megabytes, threads=None):
    self._lib = _load()
    self.megabytes, self.threads = megabytes, threads or usable_cores()
    self.elements = max(megabytes * 2**20 // 16, 1)
    self.bytes_per_pass = BYTES_PER_ELEMENT * self.elements
    self._handle = self._lib.stream_probe_create(self.elements, self.threads)
    if not self._handle:
      raise MemoryError(f"stream probe: cannot allocate {megabytes} MB")

  def run(self, passes):
    self._lib.stream_probe_run(self._handle, passes)

  def array(self, k):
    """A view of array k (0: p, 1: g, 2: m, 3: v); valid until close()."""
    return np.ctypeslib.as_array(self._lib.stream_probe_array(self._handle, k),
                                 (self.elements,))

  def close(self):
    if self._handle:
      self._lib.stream_probe_free(self._handle)
      self._handle = None

  __del__ = close
