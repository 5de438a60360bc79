"""Tests of tools/process_memory.py: current and peak resident memory of this process."""

import threading

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


def test_reset_peak_forgets_a_freed_allocation():
  block = np.ones(128 * 2**20 // 8)  # 128 MB, every page touched
  del block
  assert process_memory.peak_rss_mb() >= process_memory.current_rss_mb() + 100
  assert process_memory.reset_peak_rss()
  # Afresh from the resident set now, which no longer holds the block.
  assert process_memory.peak_rss_mb() < process_memory.current_rss_mb() + 50


def test_release_free_heap_returns_freed_small_blocks():
  # Many small blocks live in the heap (not in their own mappings), where free() keeps them.
  blocks = [bytearray(4096) for _ in range(40_000)]  # about 160 MB, every page written
  for block in blocks:
    block[:] = b"x" * 4096
  holding = process_memory.current_rss_mb()
  del blocks, block
  assert process_memory.release_free_heap()
  assert process_memory.current_rss_mb() < holding - 100


def test_file_backed_part_grows_with_a_mapped_file_not_with_heap(tmp_path):
  before = process_memory.file_backed_rss_mb()
  heap = np.ones(64 * 2**20 // 8)  # anonymous memory
  assert process_memory.file_backed_rss_mb() < before + 10
  path = tmp_path / "block"
  path.write_bytes(b"\1" * (64 * 2**20))
  mapped = np.memmap(path, dtype=np.uint8, mode="r")
  assert int(mapped.sum()) == 64 * 2**20  # every page read, so resident
  assert process_memory.file_backed_rss_mb() >= before + 60
  del heap, mapped


def test_thread_count_sees_a_new_thread():
  started, release = threading.Event(), threading.Event()
  before = process_memory.thread_count()
  thread = threading.Thread(target=lambda: (started.set(), release.wait()))
  thread.start()
  started.wait()
  assert process_memory.thread_count() == before + 1
  release.set()
  thread.join()


if __name__ == "__main__":
  pytest_main.main(__file__)
