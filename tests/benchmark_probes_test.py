"""Tests of tools/bench/memory.py, stream_probe.py, hlo.py and profile.py: what the suites
measure besides time. No TensorFlow."""

import threading

import numpy as np
import pytest

from tests import pytest_main
from tools.bench import hlo
from tools.bench import memory
from tools.bench import profile
from tools.bench import stream_probe

# ---- memory ------------------------------------------------------------------------------


def test_peak_keeps_a_freed_allocation_until_reset():
  before = memory.current_rss_mb()
  block = np.ones(64 * 2**20 // 8)  # 64 MB, every page touched
  assert memory.current_rss_mb() >= before + 60
  del block
  # (Linux updates VmHWM and statm from per-thread counters at slightly different moments, so
  # the peak is compared with the allocation.)
  assert memory.peak_rss_mb() >= before + 60 and memory.ru_maxrss_mb() >= before + 60
  assert memory.reset_peak_rss()
  assert memory.peak_rss_mb() < memory.current_rss_mb() + 30


def test_release_free_heap_returns_freed_small_blocks():
  blocks = [bytearray(b"x" * 4096) for _ in range(40_000)]  # 160 MB in the heap, written
  holding = memory.current_rss_mb()
  del blocks
  assert memory.release_free_heap()
  assert memory.current_rss_mb() < holding - 100


def test_file_backed_part_grows_with_a_mapped_file_not_with_heap(tmp_path):
  before = memory.file_backed_rss_mb()
  heap = np.ones(64 * 2**20 // 8)
  assert memory.file_backed_rss_mb() < before + 10
  path = tmp_path / "block"
  path.write_bytes(b"\1" * (64 * 2**20))
  mapped = np.memmap(path, dtype=np.uint8, mode="r")
  assert int(mapped.sum()) == 64 * 2**20  # every page read, so resident
  assert memory.file_backed_rss_mb() >= before + 60
  del heap, mapped


def test_thread_count_sees_a_new_thread():
  started, release = threading.Event(), threading.Event()
  before = memory.thread_count()
  thread = threading.Thread(target=lambda: (started.set(), release.wait()))
  thread.start()
  started.wait()
  assert memory.thread_count() == before + 1
  release.set()
  thread.join()


# ---- stream probe ------------------------------------------------------------------------


def test_stream_probe_streams_every_element():
  probe = stream_probe.StreamProbe(megabytes=1, threads=3)
  try:
    assert probe.elements == 2**16 and probe.bytes_per_pass == 28 * 2**16
    probe.run(2)  # x = x / 2 + g from 0 with g = 1: 1, then 1.5
    for k, expected in enumerate((1.5, 1.0, 1.5, 1.5)):
      np.testing.assert_array_equal(probe.array(k), np.full(2**16, expected, np.float32))
  finally:
    probe.close()


def test_probe_variant_runs_whole_passes_of_about_a_fifth_of_a_second():
  probe = stream_probe.ProbeVariant(megabytes=8)
  try:
    assert probe.passes_per_round >= 3 and probe.gbps(1.0) == probe.bytes_per_pass / 1e6
  finally:
    probe.close()


# ---- HLO ---------------------------------------------------------------------------------

_HLO = """\
HloModule m

%fused (p0: f32[8,4], p1: f32[8,4]) -> f32[8,4] {
  %p0 = f32[8,4]{1,0} parameter(0)
  %p1 = f32[8,4]{1,0} parameter(1)
  ROOT %add = f32[8,4]{1,0} add(%p0, %p1)
}

%scattered (q0: f32[8,4], q1: s32[2,1], q2: f32[2,1,4]) -> f32[8,4] {
  %q0 = f32[8,4]{1,0} parameter(0)
  %q1 = s32[2,1]{1,0} parameter(1)
  %q2 = f32[2,1,4]{2,1,0} parameter(2)
  ROOT %s = f32[8,4]{1,0} scatter(%q0, %q1, %q2), update_window_dims={1,2}, to_apply=%add
}

ENTRY %main (a: f32[8,4], b: f32[8,4], i: s32[2,1], u: f32[2,1,4]) -> (f32[8,4], f32[8,4]) {
  %a = f32[8,4]{1,0} parameter(0)
  %b = f32[8,4]{1,0} parameter(1)
  %i = s32[2,1]{1,0} parameter(2)
  %u = f32[2,1,4]{2,1,0} parameter(3)
  %scatter_fusion = f32[8,4]{1,0} fusion(%b, %i, %u), kind=kLoop, calls=%scattered
  %add_fusion = f32[8,4]{1,0} fusion(%a, %scatter_fusion), kind=kLoop, calls=%fused
  %k = (f32[8,4]{1,0}, f32[8,4]{1,0}, f32[2]{0}) custom-call(%a, %b, %u), custom_call_target="t"
  %small = f32[2,1,4]{2,1,0} negate(%u)
  ROOT %t = (f32[8,4]{1,0}, f32[8,4]{1,0}) tuple(%add_fusion, %scatter_fusion)
}
"""


def test_table_passes_count_full_table_traffic():
  """A scatter updates in place; a kernel's every table-sized operand and result element is a
  pass over the table (4 bytes each per parameter)."""
  passes = hlo.table_passes(_HLO, table_elements=32)
  assert [(p["kernel"], p["table_sized_reads"], p["table_sized_writes"], p["bytes_per_param"],
           p["in_place_rows_only"]) for p in passes] == [("scatter_fusion", 1, 1, 0, True),
                                                         ("add_fusion", 2, 1, 12, False),
                                                         ("k", 2, 2, 16, False)]


_CONV_METADATA = ('op_type="Conv2DBackpropFilter" '
                  'op_name="gradient_tape/model/conv/Conv2DBackpropFilter"')
_ADAM_METADATA = 'op_type="AssignSubVariableOp" op_name="Adam/update_variables/AssignSub"'
_METADATA_HLO = f"""
ENTRY %main (a: f32[8,8,8,3], w: f32[3,3,3,4]) -> f32[3,3,3,4] {{
  %transpose_copy_fusion.3 = f32[3,8,8,8]{{3,2,1,0}} fusion(%a), kind=kLoop, calls=%fused.1
  %convolution.7 = f32[3,3,3,4]{{3,2,1,0}} convolution(%t, %dy), metadata={{{_CONV_METADATA}}}
  %multiply_add_fusion = f32[3,3,3,4]{{3,2,1,0}} fusion(%w, %g), metadata={{{_ADAM_METADATA}}}
  ROOT %dot.2 = f32[8,4]{{1,0}} dot(%x, %y), metadata={{op_type="MatMul" op_name="m/MatMul"}}
}}
"""


def test_kernel_ops_and_their_categories():
  kernels = hlo.kernel_ops(_METADATA_HLO)
  assert kernels["convolution.7"] == ("Conv2DBackpropFilter",
                                      "gradient_tape/model/conv/Conv2DBackpropFilter")
  assert kernels["transpose_copy_fusion.3"] == ("", "") and kernels["dot.2"][0] == "MatMul"
  classify = lambda name: profile.classify_event(name, kernels)
  assert classify("transpose_copy_fusion.3")[0] == "layout copies"
  assert classify("convolution.7")[0] == "conv filter gradient"
  assert classify("multiply_add_fusion") == ("optimizer update",
                                             "XLA multiply_add_fusion (AssignSubVariableOp)")
  assert classify("model/conv/Conv2D:_MklNativeConv2D") == ("conv forward", "TF _MklNativeConv2D")
  # Runtime events and ops that only wrap other kernels are not kernels.
  for name in ("ExecutorState::Process", "end: convolution.7", "a/b:StatefulPartitionedCall",
               "x:_XlaRun", "EagerLocalExecute: __inference_f_1", "loop"):
    assert classify(name) is None, name


@pytest.mark.parametrize("op_type, op_name, category", [
    ("_MklNativeFusedConv2D", "model/conv/Conv2D", "conv forward"),
    ("Conv2DBackpropInput", "gradient_tape/conv", "conv input gradient"),
    ("_MklNativeConv2DBackpropFilterWithBias", "gradient_tape/conv", "conv filter gradient"),
    ("_MklMatMul", "model/dense/MatMul", "matmul"),
    ("BatchMatMulV2", "attention/einsum", "matmul"),
    ("Mul", "StatefulPartitionedCall/adam/Mul", "optimizer update"),
    ("ResourceApplyAdam", "train/apply", "optimizer update"),
    ("Relu", "model/relu", "other"),
])
def test_categorize(op_type, op_name, category):
  assert profile.categorize(op_type, op_name) == category


if __name__ == "__main__":
  pytest_main.main(__file__)
