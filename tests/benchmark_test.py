"""Tests of tools/benchmark.py, the benchmarks' driver, with tiny stand-in suites.

The stand-ins are small Python modules written into a temporary directory that is put on the
import path; the driver starts them as child processes exactly as it starts the real suites
(which are far too slow for a test).
"""

import json
import os
import sys
import textwrap

from absl import app
from absl import flags
from PIL import Image
import pytest

from tests import pytest_main
from tools import benchmark
from tools import benchmark_chart

# A stand-in suite: writes a report with the checks named in its module (and the arguments it
# got), or exits with the given code.
_SUITE_TEMPLATE = """\
import json
import sys

CHECKS = {checks!r}
EXIT_CODE = {exit_code!r}
WRITE_JSON = {write_json!r}

args = sys.argv[1:]
json_out = next(a.split("=", 1)[1] for a in args if a.startswith("--json_out="))
print("stand-in suite {name} running", flush=True)
if EXIT_CODE:
  print("stand-in suite {name} failing", file=sys.stderr)
  sys.exit(EXIT_CODE)
if WRITE_JSON:
  with open(json_out, "w") as f:
    json.dump({{"suite": "{name}", "argv": args, "checks": CHECKS}}, f)
"""

_FAST = [{"name": "fast / slow", "value": 1.8, "target": ">= 1.6x", "passed": True,
          "unit": "x"}]
_SLOW = [{"name": "growth", "value": 1.5, "target": "<= 1.3x", "passed": False, "unit": "x"},
         {"name": "bandwidth fraction", "value": 0.62, "target": ">= 0.5", "passed": True,
          "unit": ""}]


@pytest.fixture
def stand_ins(tmp_path, monkeypatch):
  """Writes stand-in suite modules; returns make(name, checks, exit_code, write_json) -> module."""
  package = tmp_path / "fake_suites"
  package.mkdir()
  (package / "__init__.py").write_text("")
  monkeypatch.syspath_prepend(str(tmp_path))

  def make(name, checks=(), exit_code=0, write_json=True):
    (package / f"{name}.py").write_text(_SUITE_TEMPLATE.format(
        name=name, checks=list(checks), exit_code=exit_code, write_json=write_json))
    return f"fake_suites.{name}"
  return make


def _config(tmp_path, suites, **kwargs):
  return benchmark.Config(suites=tuple(suites), out_dir=str(tmp_path / "out"), **kwargs)


def _read_json(path):
  with open(path) as f:
    return json.load(f)


# ---- Flags -------------------------------------------------------------------------------

def test_parse_suites():
  assert benchmark.parse_suites("all") == ("optimizer", "step", "embedding")
  assert benchmark.parse_suites("step") == ("step",)
  assert benchmark.parse_suites("embedding, step,embedding") == ("embedding", "step")
  assert benchmark.parse_suites("step,all") == ("optimizer", "step", "embedding")
  assert benchmark.parse_suites("Step") == ("step",)


@pytest.mark.parametrize("value", ["bogus", "", ",", "step,bogus", "optimiser"])
def test_bad_suite_names_the_flag_and_the_accepted_values(value):
  with pytest.raises(app.UsageError) as raised:
    benchmark.parse_suites(value)
  message = str(raised.value)
  assert "--suite" in message
  for accepted in ("optimizer", "step", "embedding", "all"):
    assert accepted in message


def test_flags_make_the_config(monkeypatch, tmp_path):
  monkeypatch.setenv("BUILD_WORKING_DIRECTORY", str(tmp_path))
  flags.FLAGS(["benchmark", "--suite=step,embedding", "--quick",
               "--step_flags=--models=mlp16m --rounds='3'", "--out_dir=results"])
  try:
    config = benchmark.config_from_flags()
  finally:
    flags.FLAGS.unparse_flags()
  assert config == benchmark.Config(
      suites=("step", "embedding"), out_dir=str(tmp_path / "results"), quick=True,
      suite_flags={"step": ("--models=mlp16m", "--rounds=3")})


@pytest.mark.parametrize("argv, flag", [
    (["--suite=everything"], "--suite"),
    (["--step_flags=--models='mlp16m"], "--step_flags"),
    (["--embedding_flags=--json_out=x.json"], "--embedding_flags"),
    (["--out_dir="], "--out_dir"),
])
def test_bad_flags_are_usage_errors(argv, flag):
  flags.FLAGS(["benchmark"] + argv)
  try:
    with pytest.raises(app.UsageError, match=flag):
      benchmark.config_from_flags()
  finally:
    flags.FLAGS.unparse_flags()


def test_out_dir_is_taken_from_where_bazel_run_was_called(tmp_path):
  env = {"BUILD_WORKING_DIRECTORY": str(tmp_path)}
  assert benchmark.resolve_out_dir("results", env) == str(tmp_path / "results")
  assert benchmark.resolve_out_dir("/abs/results", env) == "/abs/results"
  assert benchmark.resolve_out_dir("results", {}) == os.path.join(os.getcwd(), "results")


# ---- Merging -----------------------------------------------------------------------------

def test_merge_checks_tags_each_check_with_its_suite():
  results = {
      "optimizer": {"ok": True, "report": {"checks": _FAST}},
      "step": {"ok": True, "report": {"results": []}},  # a report without checks
      "embedding": {"ok": True, "report": {"checks": _SLOW}},
      "broken": {"ok": False, "report": None},
  }
  merged = benchmark.merge_checks(results)
  assert [(c["suite"], c["name"]) for c in merged] == [
      ("optimizer", "fast / slow"), ("embedding", "growth"), ("embedding", "bandwidth fraction")]
  assert merged[1] == {"suite": "embedding", **_SLOW[0]}
  incomplete = benchmark.merge_checks({"s": {"report": {"checks": [{"name": "n"}]}}})
  assert incomplete == [{"suite": "s", "name": "n", "value": None, "target": "", "unit": "",
                         "passed": False}]


def test_run_merges_the_suites_reports(tmp_path, stand_ins, capfd):
  suites = {"optimizer": stand_ins("optimizer", _FAST), "embedding": stand_ins("embedding", _SLOW)}
  config = _config(tmp_path, ["optimizer", "embedding"], quick=True,
                   suite_flags={"embedding": ("--rows=5,10", "--name=a b")})
  report = benchmark.run(config, suites=suites)

  assert report["failed_suites"] == []
  assert report["exit_codes"] == {"optimizer": 0, "embedding": 0}
  assert [c["suite"] for c in report["checks"]] == ["optimizer", "embedding", "embedding"]
  # Each suite got --json_out, --quick and its own extra flags (only its own).
  optimizer_args = report["suites"]["optimizer"]["report"]["argv"]
  embedding_args = report["suites"]["embedding"]["report"]["argv"]
  assert optimizer_args[1:] == ["--quick"] and optimizer_args[0].startswith("--json_out=")
  assert embedding_args[1:] == ["--quick", "--rows=5,10", "--name=a b"]

  written = _read_json(tmp_path / "out" / benchmark.JSON_NAME)
  assert written["checks"] == report["checks"]
  assert written["suites"]["embedding"]["report"]["checks"] == _SLOW
  assert {"date", "command", "machine", "config", "exit_codes"} <= set(written)
  assert written["machine"]["logical_cores"] >= 1
  with Image.open(tmp_path / "out" / benchmark.CHART_NAME) as image:
    assert image.format == "PNG" and image.width == benchmark_chart.WIDTH
  assert sorted(os.listdir(tmp_path / "out")) == [benchmark.JSON_NAME, benchmark.CHART_NAME]

  out = capfd.readouterr().out
  assert "stand-in suite optimizer running" in out  # the child's output reaches the terminal
  summary = out[out.index("Suites:"):]
  for check in report["checks"]:
    line = next(line for line in summary.splitlines() if check["name"] in line)
    assert line.startswith(check["suite"])
    assert check["target"] in line
    assert line.rstrip().endswith("NOT met" if not check["passed"] else "met")
  assert "1.80x" in summary and "0.62" in summary and "Checks: 2 of 3 met" in summary
  assert str(tmp_path / "out" / benchmark.JSON_NAME) in out


def test_failing_suite_fails_the_run_but_keeps_the_others(tmp_path, stand_ins, capfd):
  suites = {"optimizer": stand_ins("optimizer", _FAST),
            "step": stand_ins("step", exit_code=3),
            "silent": stand_ins("silent", write_json=False),
            "embedding": stand_ins("embedding", _SLOW)}
  report = benchmark.run(_config(tmp_path, suites), suites=suites)

  assert report["failed_suites"] == ["step", "silent"]
  assert report["exit_codes"] == {"optimizer": 0, "step": 3, "silent": 0, "embedding": 0}
  assert report["suites"]["step"]["error"] == "exit code 3"
  assert "wrote no report" in report["suites"]["silent"]["error"]
  assert [c["suite"] for c in report["checks"]] == ["optimizer", "embedding", "embedding"]
  written = _read_json(tmp_path / "out" / benchmark.JSON_NAME)
  assert written["failed_suites"] == ["step", "silent"]
  assert written["suites"]["optimizer"]["report"]["checks"] == _FAST
  captured = capfd.readouterr()
  assert "stand-in suite step failing" in captured.err
  assert "FAILED: exit code 3" in captured.out


def test_main_exits_non_zero_when_a_suite_fails(tmp_path, stand_ins, monkeypatch):
  monkeypatch.setitem(benchmark.SUITES, "step", stand_ins("step", exit_code=2))
  monkeypatch.setitem(benchmark.SUITES, "embedding", stand_ins("embedding", _SLOW))
  flags.FLAGS(["benchmark", "--suite=step,embedding", f"--out_dir={tmp_path / 'out'}"])
  try:
    assert benchmark.main(["benchmark"]) == 1
    flags.FLAGS.unparse_flags()
    flags.FLAGS(["benchmark", "--suite=embedding", f"--out_dir={tmp_path / 'out'}"])
    assert benchmark.main(["benchmark"]) == 0
  finally:
    flags.FLAGS.unparse_flags()


def test_describe_exit():
  assert benchmark.describe_exit(2) == "exit code 2"
  assert benchmark.describe_exit(-9) == "killed by SIGKILL"


# ---- Atomic output -----------------------------------------------------------------------

def test_failing_chart_leaves_the_previous_report_intact(tmp_path, stand_ins, monkeypatch):
  out = tmp_path / "out"
  out.mkdir()
  previous = {"checks": [], "note": "the previous good run"}
  (out / benchmark.JSON_NAME).write_text(json.dumps(previous))
  (out / benchmark.CHART_NAME).write_bytes(b"previous chart")

  def broken_chart(path, checks, title):
    with open(path, "wb") as f:
      f.write(b"half a PNG")
    raise RuntimeError("chart writer broke")

  monkeypatch.setattr(benchmark_chart, "write_chart", broken_chart)
  suites = {"embedding": stand_ins("embedding", _SLOW)}
  with pytest.raises(RuntimeError, match="chart writer broke"):
    benchmark.run(_config(tmp_path, ["embedding"]), suites=suites)
  assert _read_json(out / benchmark.JSON_NAME) == previous
  assert (out / benchmark.CHART_NAME).read_bytes() == b"previous chart"
  assert sorted(os.listdir(out)) == [benchmark.JSON_NAME, benchmark.CHART_NAME]  # no temp files


def test_write_outputs_replaces_both_files(tmp_path):
  out = tmp_path / "new" / "dir"
  report = {"checks": [{"suite": "s", "name": "n", "value": 2.0, "target": ">= 1x",
                        "passed": True, "unit": "x"}]}
  json_path, chart_path = benchmark.write_outputs(str(out), report, "title")
  assert _read_json(json_path) == report
  with Image.open(chart_path) as image:
    assert image.format == "PNG"
  report["checks"][0]["value"] = 3.0
  benchmark.write_outputs(str(out), report, "title")
  assert _read_json(json_path)["checks"][0]["value"] == 3.0
  assert sorted(os.listdir(out)) == [benchmark.JSON_NAME, benchmark.CHART_NAME]


def test_child_environment_carries_this_import_path(monkeypatch, tmp_path):
  monkeypatch.syspath_prepend(str(tmp_path))
  path = benchmark.child_environment()["PYTHONPATH"].split(os.pathsep)
  assert path[0] == str(tmp_path)
  assert os.path.dirname(os.path.dirname(os.path.abspath(benchmark.__file__))) in path


if __name__ == "__main__":
  pytest_main.main(__file__)
