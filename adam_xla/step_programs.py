"""Internal: the train step's pieces as the XLA programs its compile plan allows.

`distribution.compile_plan` names the plan; this module turns a replica step into the
functions a `TrainStep` calls: `loop(iterator)` (steps_per_loop steps, metrics averaged) and
`one_batch(batch)`. What the step computes is the caller's (`StepParts`); where the XLA
program boundaries lie is decided here alone.
"""

from typing import Callable, NamedTuple

import tensorflow as tf

from adam_xla import distribution

# Outputs that count steps over a call (summed, not averaged, over its steps), and the loss
# scale, of which a call reports the latest value.
COUNTED_OUTPUTS = ("skipped_steps", "nonfinite_steps")
_LATEST_OUTPUTS = ("loss_scale",)


class StepParts(NamedTuple):
  """The replica step, split where the replica-programs plan needs the XLA boundary.

  forward_backward(batch) -> (loss, grads, metrics), this replica's share;
  finish(loss, grads, metrics) -> outputs: applies the gradients, returns per-replica outputs
    whose sum over replicas is the step's value;
  around_call(run) -> outputs: runs `run()` (the call's steps) and adds per-call outputs.
  """

  forward_backward: Callable
  finish: Callable
  around_call: Callable


def build(parts: StepParts, strategy, plan, config):
  """Returns {"loop": fn(iterator), "one_batch": fn(batch)} as tf.functions.

  single_program: the whole step (all replicas' of OneDeviceStrategy or no strategy) is one
    XLA program, placed on the strategy's device; with `loop_in_program` the steps_per_loop
    steps are one program too.
  replica_programs: forward and backward are one XLA program per replica; the all-reduce and
    the update (itself one XLA program per device) run outside it.
  tpu_program: TPUStrategy compiles the replica step as a whole.
  With xla_scope="update" only the optimizer's update is compiled.
  """
  device = distribution.program_device(strategy)
  compile_step = config.xla_scope == "step"
  forward_backward = parts.forward_backward
  if plan == distribution.REPLICA_PROGRAMS:
    forward_backward = tf.function(forward_backward, jit_compile=compile_step)
  replica_step = lambda batch: parts.finish(*forward_backward(batch))
  one_step = lambda batch: distribution.run_and_sum(strategy, replica_step, (batch,))
  if plan == distribution.SINGLE_PROGRAM and compile_step:
    one_step = _on_device(tf.function(one_step, jit_compile=True), device)

  @tf.function(jit_compile=True)
  def compiled_loop(stacked):
    pick = lambda k: tf.nest.map_structure(lambda t: t[k], stacked)
    totals = one_step(pick(0))
    for k in tf.range(1, config.steps_per_loop):
      totals = _add_results(totals, one_step(pick(k)))
    return _average(totals, config.steps_per_loop)

  def steps(iterator):
    if config.loop_in_program:
      batches = [next(iterator) for _ in range(config.steps_per_loop)]
      with tf.device(device):
        return compiled_loop(tf.nest.map_structure(lambda *b: tf.stack(b), *batches))
    totals = one_step(next(iterator))
    for _ in tf.range(config.steps_per_loop - 1):
      totals = _add_results(totals, one_step(next(iterator)))
    return _average(totals, config.steps_per_loop)

  return {
      "loop": tf.function(lambda iterator: parts.around_call(lambda: steps(iterator))),
      "one_batch": tf.function(lambda batch: parts.around_call(lambda: one_step(batch)))
  }


def _on_device(compiled_step, device):
  """The compiled program must run where the variables live (OneDeviceStrategy's device):
  XLA cannot read a resource on another device."""

  def one_step(batch):
    with tf.device(device):
      return compiled_step(batch)

  return one_step


def _add_results(a, b):
  return {key: b[key] if key in _LATEST_OUTPUTS else a[key] + b[key] for key in a}


def _average(totals, count):
  return {
      key: value if key in COUNTED_OUTPUTS + _LATEST_OUTPUTS else value / count
      for key, value in totals.items()
  }
