"""How busy the machine was during a timed run: this process's cores and other processes' share.

Other processes (tests, builds) on a 2-core machine slow every variant they overlap with; the
benchmark tools report their share so that a noisy round can be recognized.
"""

import os
import time


class CpuMeter:
  """Cores this process kept busy, and the share of the machine other processes used."""

  def __init__(self):
    self._tick = os.sysconf("SC_CLK_TCK")
    self._cores = os.cpu_count() or 1

  def _machine_busy(self):
    try:
      with open("/proc/stat") as f:
        fields = [int(v) for v in f.readline().split()[1:9]]
    except (OSError, ValueError):
      return None
    user, nice, system, _, _, irq, softirq, steal = fields
    return (user + nice + system + irq + softirq + steal) / self._tick

  def start(self):
    t = os.times()
    return time.perf_counter(), t.user + t.system, self._machine_busy()

  def stop(self, started):
    """(wall seconds, cores used by this process, other processes' share of all cores).

    CPU times come in clock ticks (10 ms), so the shares are None for runs shorter than 0.1 s.
    """
    wall0, own0, busy0 = started
    wall = time.perf_counter() - wall0
    t = os.times()
    own = t.user + t.system - own0
    busy = self._machine_busy()
    if wall < 0.1:
      return wall, None, None
    other = None
    if busy is not None and busy0 is not None:
      other = min(max(((busy - busy0) - own) / (wall * self._cores), 0.0), 1.0)
    return wall, own / wall, other


def format_share(share):
  """A share of the CPUs as a percentage; "?" when it was not measured (runs under 0.1 s)."""
  return "?" if share is None else f"{share:.0%}"
