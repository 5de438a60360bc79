"""Where a train step's time goes: its kernels under the TensorFlow profiler, by kind of work.

The performance figures say how fast a step is; this says why, for the README's evidence where
a target is missed. A step function is run a few times under `tf.profiler`, and every kernel
event is put in one category:

  conv forward / conv input gradient / conv filter gradient / matmul
                     by the TensorFlow op a kernel comes from (its type for TensorFlow ops,
                     oneDNN's _Mkl* variants included; for an XLA kernel, the op_type recorded
                     in the metadata of the optimized HLO instruction of that name)
  layout copies      XLA kernels that transpose or copy an array into another layout (HLO
                     names transpose*/copy*, e.g. activations laid out batch-minor for XLA's
                     convolution filter gradients), whatever they recompute on the way
  optimizer update   kernels of the optimizer's ops (op names under the optimizer's name scope,
                     adam_xla's compiled update, or TF's ResourceApply* kernels)
  other              everything else: elementwise fusions, batch norm, reductions, copies

TensorFlow ops that only wrap other kernels (function calls, the XLA launch op) are not counted,
so nothing is counted twice; the time outside any kernel is the wall time minus the sum.
"""

import collections
import glob
import os
import re
import shutil
import tempfile
import time

import tensorflow as tf

CATEGORIES = ("conv forward", "conv input gradient", "conv filter gradient", "matmul",
              "layout copies", "optimizer update", "other")

_OP_TYPE_CATEGORY = {
    "Conv2D": "conv forward",
    "Conv2DBackpropInput": "conv input gradient",
    "Conv2DBackpropFilter": "conv filter gradient",
    "MatMul": "matmul",
    "BatchMatMulV2": "matmul",
    "BatchMatMulV3": "matmul",
    "Einsum": "matmul",
}
# TensorFlow ops whose events contain other kernels' events.
_WRAPPERS = re.compile(r"^(StatefulPartitionedCall|PartitionedCall|_XlaRun|XlaLaunch|_XlaCompile|"
                       r"__inference_.*|While|If|StatelessIf|StatelessWhile|IteratorGetNext.*|"
                       r"MultiDeviceIteratorGetNextFromShard|RemoteCall|OptionalGetValue)$")
_OPTIMIZER_NAME = re.compile(r"(^|/)(adam|Adam)(_\d+)?/|update_variables|ResourceApply")
_HLO_INSTRUCTION = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*\S+\s")
_HLO_METADATA = re.compile(r"metadata=\{([^}]*)\}")
_METADATA_FIELD = re.compile(r'(op_type|op_name)="([^"]*)"')


def hlo_kernels(hlo_text):
  """{instruction name: (op_type, op_name)} from an optimized HLO module's metadata."""
  kernels = {}
  for line in hlo_text.splitlines():
    match = _HLO_INSTRUCTION.match(line)
    if match:
      metadata = _HLO_METADATA.search(line)
      fields = dict(_METADATA_FIELD.findall(metadata.group(1))) if metadata else {}
      kernels[match.group(1)] = (fields.get("op_type", ""), fields.get("op_name", ""))
  return kernels


def _base_op_type(op_type):
  """oneDNN's rewrites keep the op's name: _MklNativeFusedConv2D -> Conv2D, _MklMatMul -> MatMul."""
  return re.sub(r"^_(MklNative|Mkl)?(Fused)?", "", op_type)


def categorize(op_type, op_name):
  """The category of one kernel from the TensorFlow op it implements."""
  if _OPTIMIZER_NAME.search(op_name) or op_type.startswith("ResourceApply"):
    return "optimizer update"
  base = _base_op_type(op_type)
  # Longest first: Conv2DBackpropInput before Conv2D; fused variants keep the prefix.
  for key in sorted(_OP_TYPE_CATEGORY, key=len, reverse=True):
    if base.startswith(key):
      return _OP_TYPE_CATEGORY[key]
  return "other"


def classify_event(name, hlo):
  """(category, label) of a profiler event, or None for events that are not kernels.

  TensorFlow op events are named "op_name:OpType"; XLA kernel events carry the HLO
  instruction's name, looked up in `hlo` (from `hlo_kernels`).
  """
  if name in hlo:
    op_type, op_name = hlo[name]
    if name.startswith(("transpose", "copy")):
      category = "layout copies"
    else:
      category = categorize(op_type, op_name)
    return category, f"XLA {name} ({op_type or 'no op_type'})"
  if (":" not in name or "::" in name  # "::": runtime events (ExecutorState::Process, ...)
      or name.startswith(("end:", "EagerLocalExecute", "__inference"))):
    return None
  op_name, op_type = name.rsplit(":", 1)
  if not op_type or " " in op_type or _WRAPPERS.match(op_type) or op_type[0].islower():
    return None
  return categorize(op_type, op_name), f"TF {op_type}"


def event_times(run, calls):
  """Runs `run()` `calls` times under the profiler.

  Returns (wall ms per call, {event name: ms per call}) over every event of every thread.
  """
  from tensorflow.tsl.profiler.protobuf import xplane_pb2  # pylint: disable=g-import-not-at-top
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


def profile(run, calls, hlo=None):
  """Runs `run()` `calls` times under the profiler; returns ms per call by category and label.

  Returns {"wall_ms": .., "categories": {category: ms}, "kernels": [(label, category, ms)]}
  with kernels sorted by time, largest first.
  """
  wall_ms, times = event_times(run, calls)
  by_kernel = collections.Counter()  # (category, label) -> ms per call
  for name, ms in times.items():
    kind = classify_event(name, hlo or {})
    if kind:
      by_kernel[kind] += ms
  categories = {category: 0.0 for category in CATEGORIES}
  for (category, _), ms in by_kernel.items():
    categories[category] += ms
  kernels = sorted(((label, category, ms) for (category, label), ms in by_kernel.items()),
                   key=lambda item: -item[2])
  return {"wall_ms": wall_ms, "categories": categories, "kernels": kernels}


def optimized_hlo_kernels(dump_dir):
  """hlo_kernels of every module XLA dumped (after optimizations) into `dump_dir`."""
  kernels = {}
  for path in glob.glob(os.path.join(dump_dir, "*after_optimizations.txt")):
    with open(path) as f:
      kernels.update(hlo_kernels(f.read()))
  return kernels
