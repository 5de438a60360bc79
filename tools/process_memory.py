"""This process's resident memory, for the benchmarks' memory figures (MB = 2^20 bytes)."""

import ctypes
import ctypes.util
import os
import resource
import sys


def current_rss_mb():
  """This process's resident set now (Linux /proc), else its peak so far."""
  try:
    with open("/proc/self/statm") as f:
      return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
  except (OSError, ValueError, IndexError):
    return ru_maxrss_mb()


def peak_rss_mb():
  """This process's peak resident set: VmHWM (Linux /proc), else getrusage's ru_maxrss.

  VmHWM belongs to the process's own address space. ru_maxrss does not start afresh in a
  child that was forked and exec'd: Linux carries the parent's resident size at the fork
  over, so a probe started by a large benchmark process would report the parent's size.
  """
  try:
    with open("/proc/self/status") as f:
      for line in f:
        if line.startswith("VmHWM:"):
          return int(line.split()[1]) / 2**10  # kB
  except (OSError, ValueError, IndexError):
    pass
  return ru_maxrss_mb()


def reset_peak_rss():
  """Starts VmHWM afresh from the current resident set; False where Linux's clear_refs is absent.

  Lets a probe tell the peak of steady-state steps from the transient peak of building and
  compiling that came before them.
  """
  try:
    with open("/proc/self/clear_refs", "w") as f:
      f.write("5")
    return True
  except OSError:
    return False


def file_backed_rss_mb():
  """The part of the resident set that maps files (mostly shared libraries' code: pages of
  libtensorflow that XLA's compiler touched count here); None without /proc/self/smaps_rollup."""
  fields = {}
  try:
    with open("/proc/self/smaps_rollup") as f:
      for line in f:
        parts = line.split()
        if parts and parts[0] in ("Rss:", "Anonymous:"):
          fields[parts[0]] = int(parts[1])
    return (fields["Rss:"] - fields["Anonymous:"]) / 2**10  # kB
  except (OSError, ValueError, IndexError, KeyError):
    return None


def thread_count():
  """This process's threads now (Linux /proc), else None."""
  try:
    return len(os.listdir("/proc/self/task"))
  except OSError:
    return None


def release_free_heap():
  """Returns the heap's freed pages to the OS (glibc's malloc_trim); False without glibc.

  glibc keeps memory that was freed (by XLA's compiler, say) in its arenas, where it still
  counts as resident; what remains after this is memory that is in use.
  """
  name = ctypes.util.find_library("c")
  try:
    trim = ctypes.CDLL(name).malloc_trim
  except (OSError, AttributeError, TypeError):
    return False
  trim(0)
  return True


def ru_maxrss_mb():
  peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
  return peak / 2**20 if sys.platform == "darwin" else peak / 2**10  # bytes there, KiB here
