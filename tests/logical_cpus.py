"""Logical CPU devices, so that MirroredStrategy has real replicas on a machine without
accelerators.

Call these at the top of a test module, before anything starts the TF runtime. Bazel runs
each test file in a process of its own, where the split always succeeds; under one pytest
process for several files the runtime may already have started with fewer devices, and the
tests that need more are then skipped, not failed.
"""

import pytest
import tensorflow as tf


def split(count):
  """Splits the CPU into `count` logical devices if the runtime has not started; how many
  logical CPUs the process has."""
  cpu = tf.config.list_physical_devices("CPU")[0]
  try:
    tf.config.set_logical_device_configuration(cpu,
                                               [tf.config.LogicalDeviceConfiguration()] * count)
  except RuntimeError:  # the runtime already started
    pass
  return len(tf.config.list_logical_devices("CPU"))


def require(count):
  """`split(count)`, skipping the calling module when it has fewer."""
  if split(count) < count:
    pytest.skip(
        f"needs {count} logical CPUs, configured before the TF runtime starts; run this file "
        "in its own process", allow_module_level=True)


def skip_unless(count):
  """A pytest mark for the tests of a module (that called `split`) that need `count`."""
  return pytest.mark.skipif(
      len(tf.config.list_logical_devices("CPU")) < count,
      reason=f"needs {count} logical CPUs, configured before the TF runtime starts; run this "
      "file in its own process")
