"""Timing variants side by side: the conventions every suite follows.

Each variant is built and called once untimed (tracing, compiling: `build`); then all of them
run warm-up rounds and timed rounds, every variant once per round in an order rotated from
round to round (`time_rounds`), so that noise from other processes hits them alike. A figure
is a median over the rounds, with its range and the largest share of the CPUs that other
processes used meanwhile (`summarize`). A suite's targets are data (`Target`).

A variant is any object (in a dict of them by name) with
  run(calls)          runs `calls` calls, returning once their work is done (a loss, or None)
  steps_per_call      steps (updates, probe passes) one call runs
and optionally
  first_calls         its untimed first calls (1 by default)
  overhead_seconds    of its last run, the time outside its steps (fit's epoch set-up and
                      teardown, paid once per epoch in real training), left out of its figures
  child_cpu_seconds   CPU time of a helper process of its own in its last run (a peer's),
                      counted as this process's and not as other processes' load
  close()             frees what outlives the object (a peer's process)
"""

import dataclasses
import math
import re
import statistics
import time

from tools.bench import machine

NOISY_SHARE = 0.1  # other processes' share of the CPUs above which a run is called noisy


class Unavailable(Exception):
  """A variant that cannot run here (a peer without its library, a Keras setting a strategy
  does not support): its row is left out and the report says why."""


def log(label, message):
  print(f"{time.strftime('%H:%M:%S')} [{label}] {message}", flush=True)


def close(variants):
  for variant in variants.values():
    getattr(variant, "close", lambda: None)()


def build(label, specs):
  """Constructs each variant and runs its first call(s) untimed (tracing, compiling).

  `specs`: (name, construct(), may_fail) triples; a variant whose construct raises
  Unavailable, or anything when may_fail, is skipped with the reason. Returns ({name:
  variant}, {name: {"first_call_seconds", "first_call_loss"}}, {name: reason}).
  """
  variants, setup, skipped = {}, {}, {}
  try:
    for name, construct, may_fail in specs:
      log(label, f"{name}: building and compiling ...")
      start = time.perf_counter()
      try:
        variant = construct()
        loss = variant.run(getattr(variant, "first_calls", 1))
      except Exception as error:  # pylint: disable=broad-except
        if not (may_fail or isinstance(error, Unavailable)):
          raise
        skipped[name] = error_summary(error)
        log(label, f"{name}: skipped: {skipped[name]}")
        continue
      variants[name] = variant
      setup[name] = {"first_call_seconds": time.perf_counter() - start, "first_call_loss": loss}
  except BaseException:
    close(variants)
    raise
  return variants, setup, skipped


def error_summary(error, limit=300):
  """The informative line of an error: TensorFlow's first "(0) CODE: message", else the first
  line that is not a header, a location or a traceback frame."""
  lines = [line.strip() for line in str(error).splitlines() if line.strip()]
  root = next((line for line in lines if re.match(r"\(\d+\) [A-Z_]+:", line)), None)
  skip = ("Graph execution error", "Detected at node", "File ", "Traceback")
  line = root or next(
      (line for line in lines
       if not line.startswith(skip) and not line.endswith("root error(s) found.")), "")
  text = f"{type(error).__name__}: {line}" if not isinstance(error, Unavailable) else line
  return text if len(text) <= limit else text[:limit] + " ..."


def time_rounds(label, variants, steps, rounds, warmup_rounds):
  """Untimed warm-up rounds, then timed rounds with the order rotated; {name: [record]}.

  `steps`: {name: steps per round}, run as whole calls of the variant's steps_per_call. A
  record is one timed run: seconds (without the variant's overhead), steps, ms_per_step,
  cores (this process's, with a helper's), other_load (other processes' share), loss.
  """
  names = list(variants)
  calls = {n: math.ceil(steps[n] / variants[n].steps_per_call) for n in names}
  for r in range(warmup_rounds):
    log(label, f"untimed warm-up round {r + 1}/{warmup_rounds} ...")
    for name in names:
      variants[name].run(calls[name])
  meter, records = machine.CpuMeter(), {name: [] for name in names}
  for r in range(rounds):
    for name in names[r % len(names):] + names[:r % len(names)]:
      variant, done = variants[name], calls[name] * variants[name].steps_per_call
      started = meter.start()
      loss = variant.run(calls[name])
      wall, cores, other = meter.stop(started, getattr(variant, "child_cpu_seconds", 0.0))
      record = {"seconds": wall, "steps": done, "cores": cores, "other_load": other, "loss": loss}
      if hasattr(variant, "overhead_seconds"):
        record.update(call_seconds=wall, overhead_seconds=variant.overhead_seconds,
                      seconds=wall - variant.overhead_seconds)
      record["ms_per_step"] = 1000 * record["seconds"] / done
      records[name].append(record)
      log(
          label, f"round {r + 1}/{rounds}  {name:<28} {done:4d} steps in "
          f"{record['seconds']:7.3f} s = {record['ms_per_step']:8.3f} ms/step (other processes "
          f"{machine.format_share(other)})")
  return records


def summarize(records):
  """Median, range, cores and the largest other load of a variant's timed rounds (in ms per
  step), with the rounds themselves."""
  ms = [r["ms_per_step"] for r in records]
  cores = [r["cores"] for r in records if r["cores"] is not None]
  loads = [r["other_load"] for r in records if r["other_load"] is not None]
  return {
      "median_ms": statistics.median(ms), "min_ms": min(ms), "max_ms": max(ms),
      "median_cores": statistics.median(cores) if cores else None,
      "max_other_load": max(loads) if loads else None, "rounds": records
  }


@dataclasses.dataclass(frozen=True)
class Target:
  """A figure a suite must reach: `comparison` (">=" or "<=") `bound`, in `unit`."""

  figure: str
  comparison: str
  bound: float
  unit: str = "x"

  def check(self, value, name=None, **extra):
    """The JSON check of a measured value (None: not measured, not met)."""
    passed = value is not None and (value >= self.bound
                                    if self.comparison == ">=" else value <= self.bound)
    return {
        "name": name or self.figure, "value": value,
        "target": f"{self.comparison} {self.bound:g}{self.unit}", "passed": bool(passed),
        "unit": self.unit, **extra
    }


def table(header, lines, left=2):
  """Columns padded to their widest cell, the first `left` left-aligned, a rule under the
  header."""
  widths = [max(len(str(c)) for c in column) for column in zip(header, *lines)]
  fmt = lambda cells: "  ".join(
      str(c).ljust(w) if i < left else str(c).rjust(w)
      for i, (c, w) in enumerate(zip(cells, widths))).rstrip()
  rule = "-" * len("  ".join(" " * w for w in widths))
  return "\n".join([fmt(header), rule] + [fmt(line) for line in lines])


def format_rows(rows, columns, left=2):
  """A table of dict rows; each column is "header|key" or "header|key|format spec" (the header
  may hold "|" itself); a missing figure is "-"."""
  columns = [(column.rsplit("|", 2) if column.count("|") > 1 else column.split("|") + [""])
             for column in columns]
  cell = lambda row, key, spec: "-" if row.get(key) is None else format(row[key], spec)
  return table([header for header, _, _ in columns],
               [[cell(row, key, spec) for _, key, spec in columns] for row in rows], left)


def format_checks(checks):
  if not checks:
    return "Checks: none (no case of the targets was run)."
  figure = lambda c: "n/a" if c["value"] is None else f"{c['value']:.2f}{c['unit']}"
  return "Checks (targets):\n" + table(("check", "figure", "target", "result"), [
      (c["name"], figure(c), c["target"], "PASS" if c["passed"] else "FAIL") for c in checks
  ], left=1)


def noisy_warning(loads):
  """A warning naming the runs ({label: largest other load}) other processes slowed."""
  noisy = sorted(label for label, load in loads.items() if load is not None and load > NOISY_SHARE)
  if not noisy:
    return ""
  return (f"WARNING: other processes used more than {NOISY_SHARE:.0%} of the CPUs during timed "
          f"runs of {', '.join(noisy)}; the machine was not quiet, so the numbers are noisy.")
