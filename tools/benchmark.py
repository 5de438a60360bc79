"""The project's benchmarks: runs suites, then one report and one chart of their targets.

    ./bazelw run //tools:benchmark -- [--suite=all|optimizer,step,embedding] [--quick]
        [--out_dir=benchmark_results] [settings of the suites, below]

Each suite (tools/bench/) runs in a child process of its own, so that its memory and
allocations touch no other; a failing suite is reported, the others still run, and the exit
status is 1 (a target not met does not change it). Under --out_dir (relative: from where
`bazel run` was called) go benchmark.json (machine, command, each suite's settings, time and
report, every check) and benchmark.png (bench/chart.py), renamed into place together.

Flags are parsed here, once, into each selected suite's frozen config (bench/configs.py): a
flag sets the field of its name in every selected suite that has one; --quick starts from
each suite's QUICK settings.
"""

import dataclasses
import datetime
import json
import os
import shlex
import sys
import time
from typing import Mapping

from absl import app
from absl import flags

from tools.bench import chart
from tools.bench import child
from tools.bench import configs
from tools.bench import harness
from tools.bench import machine

# Suite name -> (its config, the function run in its child process); "all" runs them in order.
SUITES = {
    "optimizer": (configs.OptimizerConfig, "tools.bench.optimizer:run"),
    "step": (configs.StepConfig, "tools.bench.step:run"),
    "embedding": (configs.EmbeddingConfig, "tools.bench.embedding:run"),
}
JSON_NAME, CHART_NAME = "benchmark.json", "benchmark.png"

flags.DEFINE_string("suite", "all", f"Suites: one of {', '.join(SUITES)}, all, or a comma list.")
flags.DEFINE_bool("quick", False, "Every suite's smoke-run settings (the flags given win).")
flags.DEFINE_string("out_dir", "benchmark_results", f"Where {JSON_NAME} and {CHART_NAME} go.")
flags.DEFINE_integer("rounds", None, "Timed interleaved rounds (default per suite: 7, 5, 5).")
flags.DEFINE_integer("warmup_rounds", None, "Untimed rounds of every variant after its first "
                     "call (default 1).")
flags.DEFINE_integer(
    "steps", None, "Timed steps (updates) per round per variant (default per "
    "suite, case or model).")
flags.DEFINE_integer("seed", None, "Seed of the data and initial values (default 0).")
flags.DEFINE_list("variants", None, "Only these variants (one suite only; default all).")
flags.DEFINE_list("cases", None, "optimizer: cases PARAMSxTENSORS (default "
                  "16000000x50,1000000x200).")
flags.DEFINE_string(
    "peer_python", None, "optimizer: an interpreter with torch and jax/optax "
    "(tools/requirements-peers.txt) for their rows; without it they are skipped.")
flags.DEFINE_integer(
    "bandwidth_mb", None, "optimizer, embedding: the bandwidth probe's arrays "
    "together, MB (default 512).")
flags.DEFINE_list("models", None, f"step: models, from {configs.MODELS}.")
flags.DEFINE_list("strategies", None, f"step: groups, from {configs.STRATEGIES}.")
flags.DEFINE_list("shard_devices", None, "step: logical CPUs of the shard_state groups "
                  "(default 2,4).")
flags.DEFINE_bool(
    "probes", None, "step: run each variant alone in a process too, for its "
    "memory and kernel profile (default on, off with --quick).")
flags.DEFINE_list("rows", None, "embedding: table sizes (default 1000000,4000000).")
flags.DEFINE_enum("ids", None, ["zipf", "uniform"], "embedding: the ids' distribution.")
flags.DEFINE_string(
    "xla_cpu_max_isa", None, "embedding: XLA:CPU's highest instruction set, as "
    "//trainers:embedding sets it (default AVX2; '' = XLA's own choice).")

_INTS = lambda values: tuple(int(v) for v in values)
# Flag -> its config value; the other flags are taken as they are.
_CONVERT = {
    "variants": lambda v: tuple(s.strip() for s in v), "models": tuple, "strategies": tuple,
    "cases": lambda v: tuple(map(configs.Case.parse, v)), "rows": _INTS, "shard_devices": _INTS
}
_SETTINGS = ("rounds", "warmup_rounds", "steps", "seed", "variants", "cases", "peer_python",
             "bandwidth_mb", "models", "strategies", "shard_devices", "probes", "rows", "ids",
             "xla_cpu_max_isa")


@dataclasses.dataclass(frozen=True)
class Config:
  suites: Mapping[str, configs.SuiteConfig]  # in the order they run
  out_dir: str
  quick: bool = False


def parse_suites(value, known=tuple(SUITES)):
  """'step' -> ('step',); 'all' -> every suite; 'embedding,step' -> in that order, once each."""
  names = [name.strip().lower() for name in (value or "").split(",") if name.strip()]
  unknown = [name for name in names if name != "all" and name not in known]
  if not names or unknown:
    raise app.UsageError(f"--suite must be one of {', '.join((*known, 'all'))}, or a comma "
                         f"list of them; got {value!r}.")
  return tuple(known) if "all" in names else tuple(dict.fromkeys(names))


def resolve_path(path, environ=None):
  """An absolute path; a relative one is taken from the directory `bazel run` was called in."""
  environ = os.environ if environ is None else environ
  path = os.path.expanduser(path)
  if not os.path.isabs(path):
    path = os.path.join(environ.get("BUILD_WORKING_DIRECTORY") or os.getcwd(), path)
  return os.path.normpath(path)


def config_from_flags(flag_values=flags.FLAGS):
  """The flags as each selected suite's config; app.UsageError naming a bad flag."""
  fv = flag_values
  names = parse_suites(fv.suite)
  if not fv.out_dir:
    raise app.UsageError("--out_dir must not be empty.")
  given = {name: fv[name].value for name in _SETTINGS if fv[name].present}
  if "variants" in given and len(names) > 1:
    raise app.UsageError("--variants names one suite's variants: select one --suite.")
  if given.get("peer_python") and os.sep in given["peer_python"]:
    given["peer_python"] = resolve_path(given["peer_python"])
  settings, suites = {}, {}
  for name, value in given.items():
    try:
      settings[name] = _CONVERT.get(name, lambda v: v)(value)
    except ValueError as error:
      raise app.UsageError(f"--{name}: {error}") from error
  try:
    for name in names:
      config_class = SUITES[name][0]
      fields = {field.name for field in dataclasses.fields(config_class)}
      suites[name] = configs.make(
          config_class, fv.quick,
          **{key: value for key, value in settings.items() if key in fields})
  except ValueError as error:
    raise app.UsageError(str(error)) from error
  unused = sorted(
      set(given) -
      {field.name for config in suites.values() for field in dataclasses.fields(config)})
  if unused:
    raise app.UsageError(f"--{', --'.join(unused)}: not a setting of the selected suites.")
  return Config(suites=suites, out_dir=resolve_path(fv.out_dir), quick=fv.quick)


def run_suite(name, target, config, index, total):
  """One suite in a child process, its output going to this terminal; its result entry."""
  print(f"\n==== [{index}/{total}] suite {name}", flush=True)
  start = time.monotonic()
  result = {
      "target": target, "config": dataclasses.asdict(config), "exit_code": 0, "ok": True,
      "error": None, "report": None
  }
  try:
    report = child.call(target, config)
    if not isinstance(report, dict) or not isinstance(report.get("checks", []), list):
      raise child.ChildFailed("its report is not a dict with a list of checks", 0)
    result["report"] = report
  except child.ChildFailed as error:
    result.update(ok=False, error=str(error), exit_code=error.exit_code)
  result["seconds"] = time.monotonic() - start
  status = "done" if result["ok"] else f"FAILED ({result['error']})"
  print(f"==== suite {name}: {status} after {_seconds(result['seconds'])}", flush=True)
  return result


def merge_checks(suite_results):
  """Every suite's checks in one list, each tagged with its suite."""
  merged = []
  for suite, result in suite_results.items():
    for check in (result.get("report") or {}).get("checks") or []:
      defaults = dict(name="?", value=None, target="", unit="")
      merged.append({**defaults, **check, "suite": suite, "passed": bool(check.get("passed"))})
  return merged


def chart_title(info, date, quick):
  cores, usable = info.get("logical_cores"), info.get("usable_cores")
  core_text = f"{usable} of {cores} cores" if usable and usable != cores else f"{cores} cores"
  return (f"adam_xla benchmarks{' (--quick)' if quick else ''}: {info.get('cpu', '?')}, "
          f"{core_text}; {date.strftime('%Y-%m-%d %H:%M %Z').strip()}")


def write_outputs(out_dir, report, title):
  """benchmark.json and benchmark.png, both or neither (renamed into place only when both are
  complete); their paths."""
  os.makedirs(out_dir, exist_ok=True)
  paths = [os.path.join(out_dir, name) for name in (JSON_NAME, CHART_NAME)]
  temporary = [
      os.path.join(out_dir, f".{name}.{os.getpid()}.tmp") for name in (JSON_NAME, CHART_NAME)
  ]
  try:
    with open(temporary[0], "w") as f:
      json.dump(report, f, indent=2)
      f.write("\n")
    chart.write_chart(temporary[1], report["checks"], title)
    for path, partial in zip(paths, temporary):
      os.replace(partial, path)
  finally:
    for partial in temporary:
      if os.path.exists(partial):
        os.remove(partial)
  return paths


def _seconds(seconds):
  return f"{seconds:.1f} s" if seconds < 10 else f"{seconds:,.0f} s"


def format_summary(report):
  """Each suite's outcome, then every check of every suite."""
  suite_lines = []
  for name, result in report["suites"].items():
    checks = [c for c in report["checks"] if c["suite"] == name]
    met = sum(c["passed"] for c in checks)
    suite_lines.append((name, "ok" if result["ok"] else f"FAILED: {result['error']}",
                        _seconds(result["seconds"]), "-" if not result["ok"] else
                        "none in its report" if not checks else f"{len(checks)} ({met} met" +
                        (f", {len(checks) - met} NOT met)" if met < len(checks) else ")")))
  out = ["Suites:", harness.table(("suite", "status", "time", "checks"), suite_lines, 4), ""]
  checks = report["checks"]
  if not checks:
    return "\n".join(out + ["Checks: none reported."])
  lines = [(c["suite"], c["name"], chart.format_value(c["value"], c["unit"]), c["target"],
            "met" if c["passed"] else "NOT met") for c in checks]
  return "\n".join(out + [
      f"Checks: {sum(c['passed'] for c in checks)} of {len(checks)} met",
      harness.table(("suite", "check", "measured", "target", "result"), lines, 5)
  ])


def run(config, suites=None):
  """Runs config.suites, prints the summary, writes the outputs; returns the report.

  `suites` maps suite names to "module:function" (default: SUITES').
  """
  targets = {name: target for name, (_, target) in SUITES.items()} if suites is None else suites
  date = datetime.datetime.now().astimezone()
  info = machine.machine_info(libraries=False)
  print(
      f"benchmark suites: {', '.join(config.suites)}{' (--quick)' if config.quick else ''}; "
      f"machine: {info['cpu']}, {info['logical_cores']} logical cores "
      f"({info['usable_cores']} usable); output: {config.out_dir}", flush=True)
  results = {
      name: run_suite(name, targets[name], suite_config, i + 1, len(config.suites))
      for i, (name, suite_config) in enumerate(config.suites.items())
  }
  failed = [name for name, result in results.items() if not result["ok"]]
  report = {
      "date": date.isoformat(timespec="seconds"),
      "command": shlex.join([sys.executable] + sys.argv), "machine": info, "config": {
          "out_dir": config.out_dir, "quick": config.quick, "suites": list(config.suites)
      }, "exit_codes": {name: result["exit_code"] for name, result in results.items()},
      "failed_suites": failed, "checks": merge_checks(results), "suites": results
  }
  print("\n" + format_summary(report), flush=True)
  paths = write_outputs(config.out_dir, report, chart_title(info, date, config.quick))
  print("\n" + "\n".join(f"wrote {path}" for path in paths))
  if failed:
    print(f"{len(failed)} suite(s) failed: " +
          ", ".join(f"{name} ({results[name]['error']})" for name in failed))
  return report


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  return 1 if run(config_from_flags())["failed_suites"] else 0


if __name__ == "__main__":
  app.run(main)
