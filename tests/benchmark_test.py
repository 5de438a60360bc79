"""Tests of tools/benchmark.py, the benchmarks' entry point: flags into the suites' configs,
and runs of stand-in suites (functions of this module) as real child processes. No
TensorFlow."""

import json
import os
import sys

from absl import app
from absl import flags
from PIL import Image
import pytest

from tests import pytest_main
from tools import benchmark
from tools.bench import chart
from tools.bench import configs

_FAST = [{"name": "fast / slow", "value": 1.8, "target": ">= 1.6x", "passed": True, "unit": "x"}]
_SLOW = [{"name": "growth", "value": 1.5, "target": "<= 1.3x", "passed": False, "unit": "x"}, {
    "name": "bandwidth fraction", "value": 0.62, "target": ">= 0.5", "passed": True, "unit": ""
}]


# Stand-in suites, run by the driver in child processes as it runs the real ones.
def fast_suite(config):
  print("stand-in fast suite running", flush=True)
  return {"checks": _FAST, "rounds": config.rounds}


def slow_suite(config):
  del config
  return {"checks": _SLOW}


def failing_suite(config):
  del config
  print("stand-in suite failing", file=sys.stderr, flush=True)
  sys.exit(3)


def malformed_suite(config):
  del config
  return ["not", "a", "report"]


_STAND_INS = {name: f"{__name__}:{name}_suite" for name in ("fast", "slow", "failing", "malformed")}


def _config(tmp_path, names, **kwargs):
  return benchmark.Config(suites={name: configs.SuiteConfig(rounds=2) for name in names},
                          out_dir=str(tmp_path / "out"), **kwargs)


def _read_json(path):
  with open(path) as f:
    return json.load(f)


def _flags(argv):
  flag_values = flags.FLAGS
  flag_values.unparse_flags()
  flag_values(["benchmark"] + argv)
  return flag_values


@pytest.fixture(autouse=True)
def _unparse_flags():
  yield
  flags.FLAGS.unparse_flags()


def test_parse_suites():
  assert benchmark.parse_suites("all") == ("optimizer", "step", "embedding")
  assert benchmark.parse_suites("embedding, step,embedding") == ("embedding", "step")
  assert benchmark.parse_suites("Step,all") == ("optimizer", "step", "embedding")
  for value in ("bogus", "", ",", "step,bogus"):
    with pytest.raises(app.UsageError, match="--suite must be one of optimizer, step, "
                       "embedding, all"):
      benchmark.parse_suites(value)


def test_flags_set_every_selected_suite_with_that_setting(monkeypatch, tmp_path):
  monkeypatch.setenv("BUILD_WORKING_DIRECTORY", str(tmp_path))
  config = benchmark.config_from_flags(
      _flags([
          "--suite=step,embedding", "--quick", "--rounds=3", "--models=mlp16m", "--shard_devices=2",
          "--rows=100,200", "--out_dir=results"
      ]))
  assert config == benchmark.Config(
      suites={
          "step": configs.make(configs.StepConfig, True, rounds=3, models=("mlp16m",),
                               shard_devices=(2,)),
          "embedding": configs.make(configs.EmbeddingConfig, True, rounds=3, rows=(100, 200))
      }, out_dir=str(tmp_path / "results"), quick=True)
  assert config.suites["embedding"].steps == 5 and not config.suites["step"].probes  # quick
  optimizer = benchmark.config_from_flags(
      _flags([
          "--suite=optimizer", "--cases=800x4", "--variants=adam_xla, keras jit",
          "--peer_python=venv/bin/python"
      ])).suites["optimizer"]
  assert optimizer.cases == (configs.Case(800, 4),) and optimizer.rounds == 7
  assert optimizer.variants == ("adam_xla", "keras jit")
  assert optimizer.peer_python == os.path.join(str(tmp_path), "venv/bin/python")


@pytest.mark.parametrize(
    "argv, flag",
    [
        (["--suite=everything"], "--suite"),
        (["--out_dir="], "--out_dir"),
        (["--rounds=0"], "--rounds"),
        (["--warmup_rounds=-1"], "--warmup_rounds"),
        (["--suite=optimizer", "--cases=16000000"], "--cases"),
        (["--suite=optimizer", "--cases=10x3"], "--cases"),
        (["--suite=optimizer", "--cases=8x2,8x2"], "--cases"),
        (["--suite=step", "--models=mlp"], "--models"),
        (["--suite=step", "--strategies=tpu"], "--strategies"),
        (["--suite=step", "--shard_devices=1"], "--shard_devices"),
        (["--suite=embedding", "--rows=1"], "--rows"),
        (["--variants=adam_xla"], "--variants"),  # names one suite's variants
        (["--suite=step", "--cases=800x4"], "--cases"),  # not a step setting
    ])
def test_bad_flags_name_the_flag(argv, flag):
  with pytest.raises(app.UsageError, match=flag):
    benchmark.config_from_flags(_flags(argv))


def test_resolve_path_from_where_bazel_run_was_called(tmp_path):
  env = {"BUILD_WORKING_DIRECTORY": str(tmp_path)}
  assert benchmark.resolve_path("results", env) == str(tmp_path / "results")
  assert benchmark.resolve_path("/abs/results", env) == "/abs/results"
  assert benchmark.resolve_path("results", {}) == os.path.join(os.getcwd(), "results")


def test_merge_checks_tags_each_check_with_its_suite():
  merged = benchmark.merge_checks({
      "optimizer": {"report": {"checks": _FAST}}, "step": {"report": {"results": []}},
      "embedding": {"report": {"checks": _SLOW}}, "broken": {"report": None}
  })
  assert [(c["suite"], c["name"]) for c in merged] == [("optimizer", "fast / slow"),
                                                       ("embedding", "growth"),
                                                       ("embedding", "bandwidth fraction")]
  assert merged[1] == {"suite": "embedding", **_SLOW[0]}
  assert benchmark.merge_checks({"s": {"report": {"checks": [{"name": "n"}]}}}) == [{
      "suite": "s", "name": "n", "value": None, "target": "", "unit": "", "passed": False
  }]


def test_run_keeps_going_past_failing_suites_and_writes_both_files(tmp_path, capfd):
  config = _config(tmp_path, _STAND_INS)
  report = benchmark.run(config, suites=_STAND_INS)
  assert report["failed_suites"] == ["failing", "malformed"]
  assert report["exit_codes"] == {"fast": 0, "slow": 0, "failing": 3, "malformed": 0}
  assert report["suites"]["failing"]["error"] == "exit code 3"
  assert "not a dict" in report["suites"]["malformed"]["error"]
  assert report["suites"]["fast"]["report"] == {"checks": _FAST, "rounds": 2}  # its config
  assert [c["suite"] for c in report["checks"]] == ["fast", "slow", "slow"]
  written = _read_json(tmp_path / "out" / benchmark.JSON_NAME)
  assert written["checks"] == report["checks"] and written["failed_suites"] == [
      "failing", "malformed"
  ]
  assert written["machine"]["logical_cores"] >= 1
  with Image.open(tmp_path / "out" / benchmark.CHART_NAME) as image:
    assert image.format == "PNG" and image.width == chart.WIDTH
  assert sorted(os.listdir(tmp_path / "out")) == [benchmark.JSON_NAME, benchmark.CHART_NAME]
  out = capfd.readouterr().out
  assert "stand-in fast suite running" in out  # a suite's output reaches the terminal
  summary = out[out.index("Suites:"):]
  assert "FAILED: exit code 3" in summary and "Checks: 2 of 3 met" in summary
  for check in report["checks"]:
    line = next(line for line in summary.splitlines() if check["name"] in line)
    assert line.startswith(check["suite"]) and check["target"] in line
    assert line.rstrip().endswith("met" if check["passed"] else "NOT met")
  assert "1.80x" in summary and "0.62" in summary


def test_main_exits_non_zero_when_a_suite_fails(tmp_path, monkeypatch):
  monkeypatch.setitem(benchmark.SUITES, "step", (configs.StepConfig, _STAND_INS["failing"]))
  monkeypatch.setitem(benchmark.SUITES, "embedding", (configs.EmbeddingConfig, _STAND_INS["slow"]))
  _flags(["--suite=step,embedding", f"--out_dir={tmp_path / 'out'}"])
  assert benchmark.main(["benchmark"]) == 1


def test_a_failing_chart_leaves_the_previous_report_intact(tmp_path, monkeypatch):
  out = tmp_path / "out"
  out.mkdir()
  (out / benchmark.JSON_NAME).write_text('{"note": "the previous good run"}')
  (out / benchmark.CHART_NAME).write_bytes(b"previous chart")

  def broken_chart(path, checks, title):
    with open(path, "wb") as f:
      f.write(b"half a PNG")
    raise RuntimeError("chart writer broke")

  monkeypatch.setattr(chart, "write_chart", broken_chart)
  with pytest.raises(RuntimeError, match="chart writer broke"):
    benchmark.write_outputs(str(out), {"checks": []}, "title")
  assert _read_json(out / benchmark.JSON_NAME) == {"note": "the previous good run"}
  assert (out / benchmark.CHART_NAME).read_bytes() == b"previous chart"
  assert sorted(os.listdir(out)) == [benchmark.JSON_NAME, benchmark.CHART_NAME]


if __name__ == "__main__":
  pytest_main.main(__file__)
