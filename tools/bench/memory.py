"""This process's resident memory (MB = 2^20 bytes), for the benchmarks' memory figures.

Linux's /proc is read directly: getrusage's ru_maxrss would be wrong in a probe child, which
inherits its parent's resident size at the fork.
"""

import ctypes
import ctypes.util
import os
import resource


def current_rss_mb():
  """The resident set now."""
  with open("/proc/self/statm") as f:
    return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_rss_mb():
  """The peak resident set (VmHWM), since the start or the last reset_peak_rss()."""
  with open("/proc/self/status") as f:
    return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 2**10


def ru_maxrss_mb():
  """getrusage's peak, which in a forked child also counts the parent's size at the fork."""
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10


def reset_peak_rss():
  """Restarts VmHWM from the resident set now (False without Linux's clear_refs), so that the
  peak of steady-state steps can be told from the transient peak of building and compiling."""
  try:
    with open("/proc/self/clear_refs", "w") as f:
      f.write("5")
    return True
  except OSError:
    return False


def file_backed_rss_mb():
  """The part of the resident set that maps files: mostly libraries' code, such as the pages of
  XLA's compiler that compiling touched."""
  fields = {}
  with open("/proc/self/smaps_rollup") as f:
    for line in f:
      parts = line.split()
      if parts and parts[0] in ("Rss:", "Anonymous:"):
        fields[parts[0]] = int(parts[1])
  return (fields["Rss:"] - fields["Anonymous:"]) / 2**10


def thread_count():
  return len(os.listdir("/proc/self/task"))


def release_free_heap():
  """Returns the heap's freed pages to the OS (glibc's malloc_trim); False without glibc.

  glibc keeps what was freed (by XLA's compiler, say) in its arenas, still resident; what
  remains after this is memory in use.
  """
  try:
    ctypes.CDLL(ctypes.util.find_library("c")).malloc_trim(0)
    return True
  except (OSError, AttributeError, TypeError):
    return False
