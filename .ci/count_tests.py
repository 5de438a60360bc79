"""Prints "N passed, M failed" for a `bazel test` run, counting individual test cases.

Usage: count_tests.py BAZEL_OUTPUT_LOG TESTLOGS_DIR. Uses only the standard library, so it
runs with any python3.
"""

import os
import re
import sys
import xml.etree.ElementTree as ElementTree

_TARGET_LINE = re.compile(r"^//(\S*):(\S+)\s+(?:\(cached\) )?"
                          r"(PASSED|FAILED|TIMEOUT|FLAKY|NO STATUS|FAILED TO BUILD|INCOMPLETE)")


def _cases(xml_path):
  """(passed, failed) test cases in one JUnit file, or None if it cannot be read."""
  try:
    root = ElementTree.parse(xml_path).getroot()
  except (OSError, ElementTree.ParseError):
    return None
  passed = failed = 0
  for case in root.iter("testcase"):
    if case.find("failure") is not None or case.find("error") is not None:
      failed += 1
    elif case.find("skipped") is None:
      passed += 1
  return (passed, failed) if passed + failed else None


def main(log_path, testlogs):
  passed = failed = 0
  with open(log_path, errors="replace") as log:
    for line in log:
      match = _TARGET_LINE.match(line.strip())
      if not match:
        continue
      package, name, status = match.groups()
      counts = _cases(os.path.join(testlogs, package, name, "test.xml"))
      if status in ("PASSED", "FLAKY") and counts and counts[1] == 0:
        passed += counts[0]
      elif counts and counts[1] > 0:
        passed, failed = passed + counts[0], failed + counts[1]
      elif status in ("PASSED", "FLAKY"):
        passed += 1
      else:
        failed += 1  # crashed, timed out or did not build: no per-case results to trust
  print(f"{passed} passed, {failed} failed")
  return 0 if passed + failed else 1


if __name__ == "__main__":
  sys.exit(main(sys.argv[1], sys.argv[2]))
