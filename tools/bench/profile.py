"""Where a step's time goes: its kernels under the TensorFlow profiler, by kind of work.

Timings say how fast a step is; this says why. Every kernel event of a few profiled calls is
put in one category, by the TensorFlow op it comes from (its type; for an XLA kernel the
op_type and op_name in the optimized HLO's metadata, see hlo.kernel_ops):

  conv forward / conv input gradient / conv filter gradient / matmul   by op type (oneDNN's
                     _Mkl* variants included)
  layout copies      XLA kernels that transpose or copy an array into another layout (HLO
                     names transpose*/copy*), whatever they recompute on the way
  optimizer update   the optimizer's ops: under its name scope, adam_xla's compiled update,
                     TensorFlow's ResourceApply* kernels
  other              everything else

Ops that only wrap other kernels (function calls, the XLA launch) are not counted, so nothing
is counted twice; kernels on two threads at once can add up to more than the wall time.
"""

import collections
import glob
import os
import re
import shutil
import tempfile
import time

CATEGORIES = ("conv forward", "conv input gradient", "conv filter gradient", "matmul",
              "layout copies", "optimizer update", "other")
UPDATE = "optimizer update"
_OP_TYPES = (  # longest first: Conv2DBackpropInput before Conv2D
    ("Conv2DBackpropFilter", "conv filter gradient"),
    ("Conv2DBackpropInput", "conv input gradient"), ("BatchMatMul", "matmul"),
    ("Conv2D", "conv forward"), ("MatMul", "matmul"), ("Einsum", "matmul"))
_WRAPPERS = re.compile(r"^(StatefulPartitionedCall|PartitionedCall|_XlaRun|XlaLaunch|_XlaCompile|"
                       r"__inference_.*|While|If|StatelessIf|StatelessWhile|IteratorGetNext.*|"
                       r"MultiDeviceIteratorGetNextFromShard|RemoteCall|OptionalGetValue)$")
_OPTIMIZER_NAME = re.compile(r"(^|/)(adam|Adam)(_\d+)?/|update_variables|ResourceApply")


def categorize(op_type, op_name):
  """The category of a kernel from the TensorFlow op it implements."""
  if _OPTIMIZER_NAME.search(op_name) or op_type.startswith("ResourceApply"):
    return UPDATE
  base = re.sub(r"^_(MklNative|Mkl)?(Fused)?", "", op_type)  # _MklNativeFusedConv2D: Conv2D
  return next((category for prefix, category in _OP_TYPES if base.startswith(prefix)), "other")


def classify_event(name, kernel_ops):
  """(category, label) of a profiler event, or None for events that are not kernels.

  TensorFlow op events are named "op_name:OpType"; XLA kernel events carry the HLO
  instruction's name, looked up in `kernel_ops` (hlo.kernel_ops).
  """
  if name in kernel_ops:
    op_type, op_name = kernel_ops[name]
    category = ("layout copies" if name.startswith(
        ("transpose", "copy")) else categorize(op_type, op_name))
    return category, f"XLA {name} ({op_type or 'no op_type'})"
  if (":" not in name or "::" in name  # "::": runtime events (ExecutorState::Process, ...)
      or name.startswith(("end:", "EagerLocalExecute", "__inference"))):
    return None
  op_name, op_type = name.rsplit(":", 1)
  if not op_type or " " in op_type or _WRAPPERS.match(op_type) or op_type[0].islower():
    return None
  return categorize(op_type, op_name), f"TF {op_type}"


def event_times(run, calls):
  """Runs `run()` `calls` times under the profiler: (wall ms per call, {event name: ms per
  call}) over every event of every thread."""
  # Here, not at the top: the categories are read without TensorFlow (in tests).
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  from tensorflow.tsl.profiler.protobuf import xplane_pb2  # pylint: disable=import-outside-toplevel
  logdir = tempfile.mkdtemp(prefix="adam_xla_profile_")
  try:
    tf.profiler.experimental.start(logdir)
    start = time.perf_counter()
    try:
      for _ in range(calls):
        run()
    finally:
      wall = time.perf_counter() - start
      tf.profiler.experimental.stop()
    totals = collections.Counter()
    for path in glob.glob(os.path.join(logdir, "**", "*.xplane.pb"), recursive=True):
      space = xplane_pb2.XSpace()
      with open(path, "rb") as f:
        space.ParseFromString(f.read())
      for plane in space.planes:
        names = {key: value.name for key, value in plane.event_metadata.items()}
        for line in plane.lines:
          for event in line.events:
            totals[names.get(event.metadata_id, "")] += event.duration_ps * 1e-9 / calls
  finally:
    shutil.rmtree(logdir, ignore_errors=True)
  return 1000 * wall / calls, dict(totals)


def profile(run, calls, kernel_ops=None):
  """ms per call of `run()` by category and by kernel (largest first): {"wall_ms",
  "categories": {category: ms}, "kernels": [(label, category, ms)]}."""
  wall_ms, times = event_times(run, calls)
  by_kernel = collections.Counter()
  for name, ms in times.items():
    kind = classify_event(name, kernel_ops or {})
    if kind:
      by_kernel[kind] += ms
  categories = dict.fromkeys(CATEGORIES, 0.0)
  for (category, _), ms in by_kernel.items():
    categories[category] += ms
  kernels = sorted(((label, category, ms) for (category, label), ms in by_kernel.items()),
                   key=lambda kernel: -kernel[2])
  return {"wall_ms": wall_ms, "categories": categories, "kernels": kernels}
