"""The one entry point of the project's benchmarks: runs suites, then one report and one chart.

    ./bazelw run //tools:benchmark -- --suite=optimizer|step|embedding|all [--quick]
        [--step_flags="--models=mlp16m --rounds=3"] [--out_dir=benchmark_results]

Suites (--suite takes one name, "all", or a comma list):

    optimizer   tools/benchmark_optimizer.py
    step        tools/benchmark_step.py
    embedding   tools/benchmark_embedding.py

Each suite is its own tool, started here as a child process, `python -m <module>
--json_out=<temporary file> [--quick] [--<suite>_flags...]`, with this interpreter and this
process's import path (so it runs the same from a checkout and from Bazel's runfiles). Separate
processes keep the suites apart: their absl flags do not clash, each one's peak memory is its
own, and one suite's allocations do not slow the next. The suites' own progress and tables go
straight to this terminal as they run. A suite that fails (non-zero exit, or no readable JSON)
is reported with its exit code; the remaining suites still run, and this tool exits non-zero at
the end.

Then, under --out_dir (a relative path is taken from the directory `bazel run` was called in):

    benchmark.json   the machine, command and date; per suite its command, exit code, time and
                     the JSON it wrote; all suites' checks in one list
    benchmark.png    one bar per check, measured against its target (tools/benchmark_chart.py)

Both files are written to temporary names and renamed into place only when both are complete,
so an interrupted or failed run never leaves a partial report over the previous one. Last, one
table of every check of every suite (measured value, target, met or NOT met) is printed.
A check that is not met does not change the exit status; a suite that fails does.
"""

import dataclasses
import datetime
import json
import os
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from typing import Mapping, Tuple

from absl import app
from absl import flags

from tools import benchmark_chart
from tools import run_info

# Suite name -> module run as `python -m`; "all" runs them in this order.
SUITES = {
    "optimizer": "tools.benchmark_optimizer",
    "step": "tools.benchmark_step",
    "embedding": "tools.benchmark_embedding",
}
JSON_NAME = "benchmark.json"
CHART_NAME = "benchmark.png"

_SUITE = flags.DEFINE_string(
    "suite", "all", f"Suites to run: one of {', '.join(SUITES)}, all, or a comma list.")
_QUICK = flags.DEFINE_bool("quick", False, "Pass --quick to every suite (a smoke run).")
_SUITE_FLAGS = {
    name: flags.DEFINE_string(
        f"{name}_flags", "", f"Extra flags for the {name} suite ({module}), one string split "
        "like a shell command line and appended after --json_out and --quick.")
    for name, module in SUITES.items()
}
_OUT_DIR = flags.DEFINE_string(
    "out_dir", "benchmark_results", f"Where {JSON_NAME} and {CHART_NAME} go. A relative path is "
    "taken from the directory `bazel run` was called in (BUILD_WORKING_DIRECTORY), else from "
    "the current directory.")


@dataclasses.dataclass(frozen=True)
class Config:
  suites: Tuple[str, ...]
  out_dir: str
  quick: bool = False
  suite_flags: Mapping[str, Tuple[str, ...]] = dataclasses.field(default_factory=dict)


# ---- Flags -------------------------------------------------------------------------------

def parse_suites(value, known=tuple(SUITES)):
  """'step' -> ('step',); 'all' -> every suite; 'embedding,step' -> in that order, once each."""
  accepted = ", ".join((*known, "all"))
  names = [name.strip().lower() for name in (value or "").split(",") if name.strip()]
  unknown = [name for name in names if name != "all" and name not in known]
  if not names or unknown:
    raise app.UsageError(f"--suite must be one of {accepted}, or a comma list of them; got "
                         f"{value!r}" + (f" ({', '.join(map(repr, unknown))} unknown)."
                                         if unknown else "."))
  if "all" in names:
    return tuple(known)
  return tuple(dict.fromkeys(names))


def parse_suite_flags(suite, value):
  """The string of --<suite>_flags as a list of arguments."""
  try:
    args = tuple(shlex.split(value or ""))
  except ValueError as e:
    raise app.UsageError(f"--{suite}_flags cannot be split like a shell command line ({e}): "
                         f"{value!r}") from e
  for arg in args:
    if arg.split("=", 1)[0] in ("--json_out", "-json_out"):
      raise app.UsageError(f"--{suite}_flags must not set --json_out: this tool sets it and "
                           "collects the report itself (see --out_dir).")
  return args


def resolve_out_dir(path, environ=None):
  """An absolute --out_dir; a relative one is taken from the directory `bazel run` ran in."""
  environ = os.environ if environ is None else environ
  path = os.path.expanduser(path)
  if not os.path.isabs(path):
    path = os.path.join(environ.get("BUILD_WORKING_DIRECTORY") or os.getcwd(), path)
  return os.path.normpath(path)


def config_from_flags():
  suites = parse_suites(_SUITE.value)
  if not _OUT_DIR.value:
    raise app.UsageError("--out_dir must not be empty.")
  suite_flags = {}
  for name, flag in _SUITE_FLAGS.items():
    args = parse_suite_flags(name, flag.value)
    if args and name not in suites:
      print(f"note: --{name}_flags is ignored: the {name} suite is not selected by --suite.")
    elif args:
      suite_flags[name] = args
  return Config(suites=suites, out_dir=resolve_out_dir(_OUT_DIR.value), quick=_QUICK.value,
                suite_flags=suite_flags)


# ---- Running the suites ------------------------------------------------------------------

def child_environment():
  """This environment, with PYTHONPATH = this process's import path (a checkout or runfiles)."""
  path = [os.path.abspath(entry) if entry else os.getcwd() for entry in sys.path]
  return dict(os.environ, PYTHONPATH=os.pathsep.join(dict.fromkeys(path)))


def describe_exit(code):
  if code < 0:
    try:
      return f"killed by {signal.Signals(-code).name}"
    except ValueError:
      return f"killed by signal {-code}"
  return f"exit code {code}"


def run_suite(name, module, json_path, quick=False, extra_args=(), index=1, total=1):
  """Runs one suite as a child process, its output going straight to this terminal."""
  command = [sys.executable, "-m", module, f"--json_out={json_path}"]
  command += ["--quick"] if quick else []
  command += list(extra_args)
  print(f"\n==== [{index}/{total}] suite {name}: {shlex.join(command)}", flush=True)
  sys.stderr.flush()
  start = time.monotonic()
  code = subprocess.call(command, env=child_environment())
  seconds = time.monotonic() - start
  result = {"module": module, "command": command, "exit_code": code, "seconds": seconds,
            "ok": False, "error": None, "report": None}
  if code != 0:
    result["error"] = describe_exit(code)
  else:
    try:
      with open(json_path) as f:
        result["report"] = json.load(f)
    except FileNotFoundError:
      result["error"] = f"exited 0 but wrote no report to {json_path}"
    except (OSError, ValueError) as e:
      result["error"] = f"exited 0 but its report {json_path} cannot be read: {e}"
    else:
      if not isinstance(result["report"], dict):
        result["error"] = "its report is not a JSON object"
      elif not isinstance(result["report"].get("checks") or [], list):
        result["error"] = "its report's \"checks\" is not a list"
  result["ok"] = result["error"] is None
  status = "done" if result["ok"] else f"FAILED ({result['error']})"
  print(f"==== suite {name}: {status} after {_seconds(seconds)}", flush=True)
  return result


def merge_checks(suite_results):
  """Every suite's checks in one list, each tagged with its suite."""
  merged = []
  for suite, result in suite_results.items():
    report = result.get("report") or {}
    for check in report.get("checks") or []:
      if not isinstance(check, dict):
        check = {"name": str(check)}
      merged.append({"name": "?", "value": None, "target": "", "unit": "", **check,
                     "suite": suite, "passed": bool(check.get("passed"))})
  return merged


def chart_title(machine, date, quick):
  cores = machine.get("logical_cores")
  usable = machine.get("usable_cores")
  core_text = (f"{usable} of {cores} cores" if usable and cores and usable != cores
               else f"{cores} cores")
  return (f"adam_xla benchmarks{' (--quick)' if quick else ''}: {machine.get('cpu', '?')}, "
          f"{core_text}; {date.strftime('%Y-%m-%d %H:%M %Z').strip()}")


# ---- Output ------------------------------------------------------------------------------

def _remove(path):
  try:
    os.remove(path)
  except FileNotFoundError:
    pass


def _write_json(path, data):
  with open(path, "w") as f:
    json.dump(data, f, indent=2)
    f.write("\n")
    f.flush()
    os.fsync(f.fileno())


def write_outputs(out_dir, report, title):
  """Writes benchmark.json and benchmark.png, both or neither: (json path, chart path).

  Each is written under a temporary name in out_dir first; only when both are complete are
  they renamed over the previous ones (os.replace, atomic on one file system).
  """
  os.makedirs(out_dir, exist_ok=True)
  json_path = os.path.join(out_dir, JSON_NAME)
  chart_path = os.path.join(out_dir, CHART_NAME)
  tag = f"{os.getpid()}.tmp"
  json_tmp = os.path.join(out_dir, f".{JSON_NAME}.{tag}")
  chart_tmp = os.path.join(out_dir, f".{CHART_NAME}.{tag}.png")
  try:
    _write_json(json_tmp, report)
    benchmark_chart.write_chart(chart_tmp, report["checks"], title)
    os.replace(json_tmp, json_path)
    os.replace(chart_tmp, chart_path)
  finally:
    _remove(json_tmp)
    _remove(chart_tmp)
  return json_path, chart_path


def _table(header, lines):
  widths = [max(len(str(c)) for c in column) for column in zip(header, *lines)]
  fmt = lambda cells: "  ".join(str(c).ljust(w) for c, w in zip(cells, widths)).rstrip()
  return "\n".join([fmt(header), "  ".join("-" * w for w in widths)] +
                   [fmt(line) for line in lines])


def _seconds(seconds):
  return f"{seconds:.1f} s" if seconds < 10 else f"{seconds:,.0f} s"


def format_summary(report):
  """The end-of-run tables: each suite's outcome, then every check of every suite."""
  suite_lines = []
  for name, result in report["suites"].items():
    checks = [c for c in report["checks"] if c["suite"] == name]
    met = sum(c["passed"] for c in checks)
    if not result["ok"]:
      check_text = "-"
    elif checks:
      check_text = f"{len(checks)} ({met} met" + (
          f", {len(checks) - met} NOT met)" if met < len(checks) else ")")
    else:
      check_text = "none in its report"
    suite_lines.append((name, "ok" if result["ok"] else f"FAILED: {result['error']}",
                        _seconds(result["seconds"]), check_text))
  out = ["Suites:", _table(("suite", "status", "time", "checks"), suite_lines), ""]
  checks = report["checks"]
  if checks:
    lines = [(c["suite"], c["name"], benchmark_chart.format_value(c["value"], c["unit"]),
              c["target"], "met" if c["passed"] else "NOT met") for c in checks]
    met = sum(c["passed"] for c in checks)
    out += [f"Checks: {met} of {len(checks)} met",
            _table(("suite", "check", "measured", "target", "result"), lines)]
  else:
    out.append("Checks: none reported.")
  return "\n".join(out)


def run(config, suites=None):
  """Runs config.suites, prints the summary, writes the outputs; returns the report (a dict).

  `suites` maps suite names to modules (default SUITES).
  """
  suites = SUITES if suites is None else suites
  unknown = [name for name in config.suites if name not in suites]
  if unknown:
    raise ValueError(f"unknown suites {unknown}; known: {', '.join(suites)}")
  date = datetime.datetime.now().astimezone()
  machine = run_info.machine_info(libraries=False)
  print(f"benchmark suites: {', '.join(config.suites)}{' (--quick)' if config.quick else ''}; "
        f"machine: {machine['cpu']}, {machine['logical_cores']} logical cores "
        f"({machine['usable_cores']} usable); output: {config.out_dir}", flush=True)

  results = {}
  with tempfile.TemporaryDirectory(prefix="adam_xla_benchmark_") as tmp:
    for i, name in enumerate(config.suites):
      results[name] = run_suite(
          name, suites[name], os.path.join(tmp, f"{name}.json"), quick=config.quick,
          extra_args=config.suite_flags.get(name, ()), index=i + 1, total=len(config.suites))

  checks = merge_checks(results)
  failed = [name for name, result in results.items() if not result["ok"]]
  report = {
      "date": date.isoformat(timespec="seconds"),
      "command": shlex.join([sys.executable] + sys.argv),
      "machine": machine,
      "config": dataclasses.asdict(config),
      "exit_codes": {name: result["exit_code"] for name, result in results.items()},
      "failed_suites": failed,
      "checks": checks,
      "suites": results,
  }
  print("\n" + format_summary(report), flush=True)
  json_path, chart_path = write_outputs(config.out_dir, report,
                                        chart_title(machine, date, config.quick))
  print(f"\nwrote {json_path}\nwrote {chart_path}")
  if failed:
    print(f"{len(failed)} suite(s) failed: " + ", ".join(
        f"{name} ({results[name]['error']})" for name in failed))
  return report


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  return 1 if run(config_from_flags())["failed_suites"] else 0


if __name__ == "__main__":
  app.run(main)
