"""Smoke test of tools/benchmark_embedding.py: the --quick run end to end, and its parts."""

import json
import math
import os
import subprocess
import sys

from absl import app
from absl import flags
import numpy as np
import pytest

from adam_xla import cpu_kernel
from tests import pytest_main
from tools import benchmark_embedding

_STEP_VARIANTS = ("adam_xla dense", "adam_xla lazy", "keras adam jit", "keras adam no-jit")
_UPDATE_VARIANTS = ("optimizer dense", "optimizer lazy")
_QUICK_ROWS = benchmark_embedding._QUICK["rows"]  # pylint: disable=protected-access


def _positive_finite(value):
  return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
  """One --quick run of the tool as a program, as `bazel run` starts it: (stdout, JSON)."""
  root = os.path.dirname(os.path.dirname(os.path.abspath(benchmark_embedding.__file__)))
  env = dict(os.environ, PYTHONPATH=os.pathsep.join(
      [root] + os.environ.get("PYTHONPATH", "").split(os.pathsep)))
  path = str(tmp_path_factory.mktemp("benchmark") / "out.json")
  done = subprocess.run(
      [sys.executable, "-m", "tools.benchmark_embedding", "--quick", f"--json_out={path}"],
      env=env, capture_output=True, text=True, check=False, timeout=300)
  assert done.returncode == 0, done.stderr[-5000:]
  with open(path) as f:
    return done.stdout, json.load(f)


def test_table_has_every_row(quick_run):
  stdout, _ = quick_run
  lines = stdout.splitlines()
  for rows in _QUICK_ROWS:
    for variant in _STEP_VARIANTS + _UPDATE_VARIANTS + ("bandwidth probe", "Adam floor"):
      assert any(line.startswith(f"{rows:,} ") and variant in line for line in lines), (
          rows, variant, stdout)
  checks = [line for line in lines if line.rstrip().endswith(("PASS", "FAIL"))]
  assert len(checks) == 2 + len(_QUICK_ROWS), stdout
  assert any(line.startswith("lazy step growth") for line in checks)
  assert any(line.startswith("keras best") for line in checks)
  assert sum(line.startswith("dense optimizer bandwidth") for line in checks) == len(_QUICK_ROWS)
  assert "Compiled dense update at" in stdout
  assert "Lazy step of every table size in the same interleaved rounds" in stdout


def test_json_has_positive_finite_figures(quick_run):
  _, report = quick_run
  assert {"command", "machine", "config", "wall_seconds", "sizes", "lazy_growth",
          "checks"} <= set(report)
  assert report["machine"]["logical_cores"] >= 1 and report["config"]["quick"] is True
  assert [size["rows"] for size in report["sizes"]] == _QUICK_ROWS
  for size in report["sizes"]:
    for key in ("bandwidth_gbps", "adam_floor_ms", "table_params", "unique_ids_per_batch"):
      assert _positive_finite(size[key]), (key, size[key])
    assert size["unique_ids_per_batch"] < size["batch_size"]  # Zipf ids repeat
    assert set(size["variants"]) == set(_STEP_VARIANTS + _UPDATE_VARIANTS +
                                        ("memory bandwidth probe",))
    for name, variant in size["variants"].items():
      for key in ("median_ms", "min_ms", "max_ms", "first_call_seconds"):
        assert _positive_finite(variant[key]), (name, key, variant[key])
      assert variant["min_ms"] <= variant["median_ms"] <= variant["max_ms"]
      assert variant["rounds"] and all(_positive_finite(r["seconds"]) and r["steps"] >= 1
                                       for r in variant["rounds"])
    for name in _STEP_VARIANTS:
      assert _positive_finite(size["variants"][name]["keras_best_over_this"])
      assert _positive_finite(size["variants"][name]["rounds"][0]["loss"])
    for name in _UPDATE_VARIANTS:
      assert _positive_finite(size["variants"][name]["gbps_at_28_bytes"])
      assert _positive_finite(size["variants"][name]["fraction_of_bandwidth"])
    analysis = size["dense_update_analysis"]
    if cpu_kernel.load():  # one pass of the rows kernel: param, m, v read and written in place
      assert [(p["opcode"], p["table_sized_reads"], p["table_sized_writes"], p["bytes_per_param"])
              for p in analysis["passes"]] == [("custom-call", 3, 3, 24)]
    else:  # XLA's loops, the gradient's rows scatter-added in place into the moments
      assert analysis["modeled_bytes_per_param"] >= 28
      assert any(p["in_place_rows_only"] for p in analysis["passes"])
  assert [g["rows"] for g in report["lazy_growth"]] == _QUICK_ROWS
  for growth in report["lazy_growth"]:
    assert _positive_finite(growth["median_ms"]) and _positive_finite(growth["ratio_to_smallest"])
    assert growth["paired_ratios_to_smallest"] and all(
        _positive_finite(r) for r in growth["paired_ratios_to_smallest"])
  assert len(report["checks"]) == 2 + len(_QUICK_ROWS)
  for check in report["checks"]:
    assert _positive_finite(check["value"]) and isinstance(check["passed"], bool), check


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
  %small = f32[2,1,4]{2,1,0} negate(%u)
  ROOT %t = (f32[8,4]{1,0}, f32[8,4]{1,0}) tuple(%add_fusion, %scatter_fusion)
}
"""


def test_table_passes_counts_full_table_traffic():
  passes = benchmark_embedding.table_passes(_HLO, table_elements=32)
  assert [(p["kernel"], p["bytes_per_param"], p["in_place_rows_only"]) for p in passes] == [
      ("scatter_fusion", 0, True), ("add_fusion", 12, False)]


def test_table_passes_count_each_table_sized_element_of_a_tuple_result():
  hlo = """\
ENTRY %main (a: f32[32], b: f32[32], c: f32[32], g: f32[8]) -> (f32[32], f32[32], f32[32]) {
  %a = f32[32]{0} parameter(0)
  %b = f32[32]{0} parameter(1)
  %c = f32[32]{0} parameter(2)
  %g = f32[8]{0} parameter(3)
  %k = (f32[32]{0}, f32[32]{0}, f32[32]{0}) custom-call(%a, %b, %c, %g), custom_call_target="t"
  ROOT %t = (f32[32]{0}, f32[32]{0}, f32[32]{0}) tuple(%k)
}
"""
  passes = benchmark_embedding.table_passes(hlo, table_elements=32)
  assert [(p["kernel"], p["table_sized_reads"], p["table_sized_writes"], p["bytes_per_param"])
          for p in passes] == [("k", 3, 3, 24)]


def test_zipf_ids_repeat_and_stay_in_the_table():
  features, labels = benchmark_embedding.make_data(1000, 256, 2, "zipf", 1.1, seed=0)
  ids = features["sparse"]
  assert ids.shape == (512, 1) and features["dense"].shape == (512, 13)
  assert labels.shape == (512,) and set(np.unique(labels)) <= {0.0, 1.0}
  assert ids.min() >= 0 and ids.max() < 1000
  assert len(np.unique(ids[:256])) < 200  # frequent ids repeat within a batch
  uniform, _ = benchmark_embedding.make_data(1000, 256, 2, "uniform", 1.1, seed=0)
  assert len(np.unique(uniform["sparse"][:256])) > len(np.unique(ids[:256]))


@pytest.mark.parametrize("argv", [["--rows=1"], ["--rows=x"], ["--rounds=0"]])
def test_bad_flags(argv):
  flags.FLAGS(["benchmark_embedding"] + argv)
  try:
    with pytest.raises(app.UsageError):
      benchmark_embedding.run()
  finally:
    flags.FLAGS.unparse_flags()


if __name__ == "__main__":
  pytest_main.main(__file__)
