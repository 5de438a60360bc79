"""Runs one test file under pytest from a Bazel py_test, writing the JUnit XML Bazel expects."""

import os
import sys

import pytest


def main(test_file):
  args = [test_file, "-q", "-p", "no:cacheprovider"]
  if "XML_OUTPUT_FILE" in os.environ:
    args.append(f"--junitxml={os.environ['XML_OUTPUT_FILE']}")
  sys.exit(pytest.main(args))
