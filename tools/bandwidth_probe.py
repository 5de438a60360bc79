"""The machine's read+write memory bandwidth as XLA code sees it: the reference for Adam's floor.

An in-place `v = v * 0.5 + 1` over a float32 array larger than the caches, compiled with XLA,
reads and writes each element once: 8 bytes per element per pass.
"""

import tensorflow as tf

BYTES_PER_ELEMENT = 8


class InPlaceProbe:
  """`megabytes` of float32 updated in place by one compiled program per pass."""

  def __init__(self, megabytes):
    self.megabytes = megabytes
    self.elements = megabytes * 2**20 // 4
    self.bytes_per_pass = BYTES_PER_ELEMENT * self.elements
    self._v = tf.Variable(tf.ones([self.elements], tf.float32), name="bandwidth_probe")

    @tf.function(jit_compile=True)
    def one_pass():
      # Converges to 2.0: no overflow or denormals, however many passes.
      self._v.assign(self._v * 0.5 + 1.0)

    self._one_pass = one_pass

  def run(self, passes):
    """Runs `passes` passes and waits for them (by fetching one element)."""
    for _ in range(passes):
      self._one_pass()
    self._v[0].numpy()
