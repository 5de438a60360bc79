"""Tests of tools/bench/harness.py, child.py and machine.py: the rounds every suite times its
variants in, targets, child processes, and the machine's load. No TensorFlow."""

import os
import time

import pytest

from tests import pytest_main
from tools.bench import child
from tools.bench import harness
from tools.bench import machine


class _Fake:
  """A variant that notes its calls; `seconds` per call, a loss equal to its call count."""

  def __init__(self, name, log, seconds=0.0, steps_per_call=1, **attributes):
    self.name, self.log, self.seconds, self.steps_per_call = name, log, seconds, steps_per_call
    self.calls = 0
    self.__dict__.update(attributes)

  def run(self, calls):
    self.log.append((self.name, calls))
    self.calls += calls
    time.sleep(self.seconds * calls)
    return float(self.calls)


def test_rounds_rotate_the_order_after_untimed_warm_up_rounds():
  log = []
  variants = {n: _Fake(n, log, steps_per_call=spc) for n, spc in (("a", 1), ("b", 10), ("c", 1))}
  records = harness.time_rounds("test", variants, {"a": 5, "b": 15, "c": 5}, rounds=3,
                                warmup_rounds=1)
  assert log == [
      ("a", 5),
      ("b", 2),
      ("c", 5),  # warm-up; then each round shifted by one
      ("a", 5),
      ("b", 2),
      ("c", 5),
      ("b", 2),
      ("c", 5),
      ("a", 5),
      ("c", 5),
      ("a", 5),
      ("b", 2)
  ]
  assert [r["steps"] for r in records["b"]] == [20] * 3  # whole calls of 10
  assert [r["loss"] for r in records["a"]] == [10.0, 15.0, 20.0]
  assert all(r["ms_per_step"] == pytest.approx(1000 * r["seconds"] / r["steps"])
             for rs in records.values() for r in rs)


def test_overhead_is_left_out_and_a_helpers_cpu_is_ours():
  sleeper = _Fake("fit", [], seconds=0.15, overhead_seconds=0.05,
                  child_cpu_seconds=0.15 * os.cpu_count())  # a helper busy on every core
  [record] = harness.time_rounds("test", {"fit": sleeper}, {"fit": 1}, 1, 0)["fit"]
  assert record["call_seconds"] == pytest.approx(0.15, abs=0.05)
  assert record["seconds"] == pytest.approx(record["call_seconds"] - 0.05)
  # Counted as other processes' the helper's CPU would make the machine look fully busy.
  assert record["cores"] * record["call_seconds"] >= 0.15 * os.cpu_count() - 0.02
  assert record["other_load"] is None or record["other_load"] < 0.15
  summary = harness.summarize([dict(record, ms_per_step=ms) for ms in (3.0, 1.0, 2.0)])
  assert (summary["median_ms"], summary["min_ms"], summary["max_ms"]) == (2.0, 1.0, 3.0)


def test_build_skips_unavailable_and_may_fail_variants_and_closes_on_errors():
  closed = []

  def unavailable():
    raise harness.Unavailable("no --peer_python given")

  def broken():
    raise RuntimeError("Graph execution error:\n\n(0) INVALID_ARGUMENT: You must feed a value\n"
                       "  File x.py, line 3")

  def closing():
    return _Fake("c", [], close=lambda: closed.append("c"))

  variants, setup, skipped = harness.build("test", [("a", lambda: _Fake("a", []), False),
                                                    ("peer", unavailable, False),
                                                    ("keras", broken, True)])
  assert list(variants) == list(setup) == ["a"] and variants["a"].calls == 1
  assert setup["a"]["first_call_loss"] == 1.0 and setup["a"]["first_call_seconds"] >= 0
  assert skipped == {
      "peer": "no --peer_python given",
      "keras": "RuntimeError: (0) INVALID_ARGUMENT: You must feed a value"
  }
  with pytest.raises(RuntimeError, match="Graph execution"):
    harness.build("test", [("c", closing, False), ("keras", broken, False)])
  assert closed == ["c"]


def test_targets_check_values():
  at_least = harness.Target("keras jit / adam_xla", ">=", 1.6)
  assert at_least.check(2.0, "name", model="m") == {
      "name": "name", "value": 2.0, "target": ">= 1.6x", "passed": True, "unit": "x", "model": "m"
  }
  assert not at_least.check(None)["passed"] and at_least.check(None)["name"] == at_least.figure
  at_most = harness.Target("fraction", "<=", 0.5, unit="")
  assert at_most.check(0.5)["passed"] and not at_most.check(0.6)["passed"]
  assert at_most.check(0.5)["target"] == "<= 0.5"
  assert "FAIL" in harness.format_checks([at_most.check(0.6)])


def test_tables_and_the_noise_warning():
  text = harness.table(("name", "figure"), [("a", "1.00"), ("long name", "10.00")], left=1)
  assert text.splitlines() == [
      "name       figure", "-----------------", "a            1.00", "long name   10.00"
  ]
  rows = harness.format_rows([{"v": "a", "d": 1e-7}, {"v": "b"}],
                             ["variant|v", "max |diff||d|.1e", "share|d|.0%"], left=1)
  assert rows.splitlines()[0].split() == ["variant", "max", "|diff|", "share"]
  assert rows.splitlines()[2:] == ["a           1.0e-07     0%", "b                 -      -"]
  assert harness.noisy_warning({"a": 0.05, "b": None}) == ""
  assert "timed runs of b, c;" in harness.noisy_warning({"c": 0.2, "b": 0.5, "a": 0.0})


def test_child_returns_the_result_or_says_why_it_failed():
  assert child.call("math:hypot", 3, 4, quiet=True) == 5.0
  with pytest.raises(child.ChildFailed, match="exit code 1: ValueError: math domain error") as e:
    child.call("math:sqrt", -1, quiet=True)
  assert e.value.exit_code == 1
  assert child.describe_exit(-9) == "killed by SIGKILL"


def test_machine_info_and_cpu_meter():
  info = machine.machine_info(libraries=False)
  assert info["logical_cores"] >= info["usable_cores"] >= 1 and info["cpu"]
  meter = machine.CpuMeter()
  started = meter.start()
  end = time.process_time() + 0.15
  while time.process_time() < end:  # this thread busy for 0.15 s of CPU time
    pass
  wall, cores, other = meter.stop(started)
  assert wall >= 0.15 and 0 < cores < 1.2 and 0 <= other <= 1  # one thread: at most a core
  assert meter.stop(meter.start())[1:] == (None, None)  # too short to tell
  assert machine.format_share(None) == "?" and machine.format_share(0.123) == "12%"


if __name__ == "__main__":
  pytest_main.main(__file__)
