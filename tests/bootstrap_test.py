"""Tests of tools/bootstrap.sh, the install steps behind ./bazelw and tools/bazel.

Each case sources the script in a fresh bash with a temporary workspace root, so nothing is
installed and the real .venv is never touched.
"""

import hashlib
import os
import pathlib
import shutil
import subprocess

from tests import pytest_main

SCRIPT = pathlib.Path(__file__).resolve().parent.parent / "tools" / "bootstrap.sh"


def _run(body, root, extra_env=None, path=None):
  env = {
      "HOME": str(root), "ADAM_XLA_ROOT": str(root),
      "PATH": path if path is not None else os.environ["PATH"]
  }
  env.update(extra_env or {})
  return subprocess.run(["bash", "-c", f"source '{SCRIPT}'; {body}"], env=env, capture_output=True,
                        text=True, timeout=60)


def test_missing_requirements_file_names_it_and_the_fix(tmp_path):
  result = _run("ensure_venv", tmp_path, {"ADAM_XLA_REQUIREMENTS": str(tmp_path / "nope.txt")})
  assert result.returncode == 1
  assert "requirements file" in result.stderr and "nope.txt" in result.stderr
  assert "to fix: set ADAM_XLA_REQUIREMENTS" in result.stderr


def test_missing_interpreter_names_it_and_the_fix(tmp_path):
  (tmp_path / "requirements.txt").write_text("absl-py\n")
  result = _run("ensure_venv", tmp_path, {"ADAM_XLA_PYTHON": "python3-not-here"})
  assert result.returncode == 1
  assert "interpreter 'python3-not-here' not found" in result.stderr
  assert "ADAM_XLA_PYTHON" in result.stderr


def test_current_stamp_skips_install_and_puts_venv_first_on_path(tmp_path):
  requirements = tmp_path / "requirements.txt"
  requirements.write_text("absl-py==2.5.1\n")
  venv_bin = tmp_path / ".venv" / "bin"
  venv_bin.mkdir(parents=True)
  digest = hashlib.sha256(requirements.read_bytes()).hexdigest()
  (tmp_path / ".venv" / ".adam_xla_stamp").write_text(f"{digest} python3\n")
  result = _run('ensure_venv; echo "$PATH"; echo "$VIRTUAL_ENV"', tmp_path)
  assert result.returncode == 0, result.stderr
  assert "creating" not in result.stderr
  path, venv = result.stdout.splitlines()
  assert path.split(":")[0] == str(venv_bin)
  assert venv == str(tmp_path / ".venv")


def test_changed_requirements_rebuild_the_venv(tmp_path):
  """A stale stamp triggers a rebuild; a bad interpreter then stops it with a message."""
  (tmp_path / "requirements.txt").write_text("absl-py==2.5.1\n")
  (tmp_path / ".venv").mkdir()
  (tmp_path / ".venv" / ".adam_xla_stamp").write_text("stale python3\n")
  result = _run("ensure_venv", tmp_path, {"ADAM_XLA_PYTHON": "python3-not-here"})
  assert result.returncode == 1 and "not found" in result.stderr


def _bin_dir_with(tmp_path, *tools):
  """A PATH directory holding only bash, the coreutils the script needs, and `tools`."""
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir()
  for name in ("bash", "id", "cat", "sha256sum", "cut", "dirname"):
    os.symlink(shutil.which(name), bin_dir / name)
  for name in tools:
    fake = bin_dir / name
    fake.write_text("#!/bin/sh\necho fake\n")
    fake.chmod(0o755)
  return str(bin_dir)


def test_prefers_bazelisk_then_bazel_on_path(tmp_path):
  path = _bin_dir_with(tmp_path, "bazelisk", "bazel")
  result = _run('ensure_bazel; echo "$BAZEL"', tmp_path, path=path)
  assert result.returncode == 0, result.stderr
  assert result.stdout.strip() == os.path.join(path, "bazelisk")


def test_no_bazel_and_no_apt_says_how_to_install(tmp_path):
  path = _bin_dir_with(tmp_path)
  result = _run("ensure_bazel", tmp_path, path=path)
  assert result.returncode == 1
  assert "no bazel or bazelisk on PATH and no apt-get" in result.stderr
  assert "to fix: install Bazel" in result.stderr


if __name__ == "__main__":
  pytest_main.main(__file__)
