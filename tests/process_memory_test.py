"""Tests of tools/process_memory.py: current and peak resident memory of this process."""

import numpy as np

from tests import pytest_main
from tools import process_memory


def test_peak_covers_a_large_allocation_after_it_is_freed():
  before = process_memory.current_rss_mb()
  block = np.ones(64 * 2**20 // 8)  # 64 MB, every page touched
  during = process_memory.current_rss_mb()
  del block
  assert before > 0 and during >= before + 60
  # The peak keeps the freed block. (Linux updates VmHWM and statm from per-thread counters at
  # slightly different moments, so the peak is compared with the allocation, not with `during`.)
  assert process_memory.peak_rss_mb() >= before + 60
  assert process_memory.ru_maxrss_mb() >= before + 60


if __name__ == "__main__":
  pytest_main.main(__file__)
