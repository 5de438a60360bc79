"""Logical CPU devices, so that MirroredStrategy has real replicas on a machine without
accelerators.

Call these at the top of a test module, before anything starts the TF runtime. Bazel runs
each test file in a process of its own, where the split always succeeds; under one pytest
process for several files the runtime may already have started with fewer devices, and the
tests that need more are then skipped, not failed.
"""

import pytest
import tensorflow as tf

from trainers.common import strategies


def split(count):
  """The trainers' `--num_logical_cpus` split, if the runtime has not started; how many
  logical CPUs the process has."""
  try:
    strategies.split_cpu(count)
  except RuntimeError:  # the runtime already started
    pass
  return len(tf.config.list_logical_devices("CPU"))


def require(count):
  """`split(count)`, skipping the calling module when it has fewer."""
  if split(count) < count:
    pytest.skip(_why(count), allow_module_level=True)


def skip_unless(count):
  """A pytest mark for the tests of a module (that called `split`) that need `count`."""
  return pytest.mark.skipif(len(tf.config.list_logical_devices("CPU")) < count, reason=_why(count))


def _why(count):
  return (f"needs {count} logical CPUs, configured before the TF runtime starts; run this file "
          "in its own process")
