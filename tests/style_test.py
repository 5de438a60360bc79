"""The repository's Python style: ruff's lint rules and yapf's layout, over every Python file.

One linter and one formatter, configured at the root (ruff.toml, .style.yapf), so that a style
question has one answer that a machine checks. Both run on the checkout itself: under Bazel the
runfiles hold only this file (a symlink into the checkout), so the checkout is found by
resolving it, and the BUILD target is tagged "external" so that Bazel reruns it instead of
reusing a pass for sources it does not track.
"""

import pathlib
import subprocess
import sys

from tests import pytest_main

ROOT = pathlib.Path(__file__).resolve().parent.parent
PACKAGES = ("adam_xla", "trainers", "tools", "tests")
# The commands a developer runs to fix what the tests report.
LINT_FIX = ".venv/bin/ruff check --fix " + " ".join(PACKAGES)
FORMAT_APPLY = ".venv/bin/yapf -i -r -p " + " ".join(PACKAGES)
# A failure shows this much of the formatter's diff (all of it can be thousands of lines).
DIFF_LINES_SHOWN = 200


def _run(tool, *args):
  """Runs a tool of this interpreter's environment from the checkout's root."""
  return subprocess.run([sys.executable, "-m", tool, *args], cwd=ROOT, capture_output=True,
                        text=True, check=False)


def test_the_checkout_and_its_configs_are_found():
  for name in ("ruff.toml", ".style.yapf", *PACKAGES):
    assert (ROOT / name).exists(), f"{ROOT} is not the checkout: it has no {name}"


def test_ruff_finds_nothing():
  # --no-cache: ruff would otherwise write .ruff_cache/ into the checkout.
  result = _run("ruff", "check", "--no-cache", "--output-format=concise", *PACKAGES)
  assert result.returncode == 0, (
      f"ruff (rules in ruff.toml) found problems; `{LINT_FIX}` fixes those marked [*]:\n"
      f"{result.stdout}{result.stderr}")


def test_yapf_would_change_nothing():
  result = _run("yapf", "--diff", "--recursive", "--parallel", *PACKAGES)
  if result.returncode == 0:
    return
  diff = result.stdout.splitlines()
  files = [line.split()[1] for line in diff if line.startswith("+++ ")]
  assert files or result.stderr, "yapf failed without a diff or a message"
  summary = (f"yapf (style in .style.yapf) would reformat {len(files)} file(s), {len(diff)} "
             f"lines of diff; `{FORMAT_APPLY}` applies it.")
  message = [summary, *files]
  if result.stderr:
    message.append(result.stderr)
  message.append(f"The diff's first {DIFF_LINES_SHOWN} lines:")
  message.extend(diff[:DIFF_LINES_SHOWN])
  raise AssertionError("\n".join(message))


if __name__ == "__main__":
  pytest_main.main(__file__)
