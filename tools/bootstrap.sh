# Sourced by ./bazelw and tools/bazel: installs what adam_xla needs on first use.
#
# ensure_bazel  sets BAZEL to a Bazel launcher, installing Debian's bazel-bootstrap if none.
# ensure_venv   creates <workspace>/.venv from the pinned requirements file and puts it first
#               on PATH, so Bazel's Python toolchain (first python3 on PATH) runs in it.
#
# Environment:
#   ADAM_XLA_PYTHON        interpreter for the virtualenv (default: python3)
#   ADAM_XLA_REQUIREMENTS  requirements file (default: requirements.txt, tensorflow-cpu); point
#                          it at a file with your GPU or TPU TensorFlow build instead.

ADAM_XLA_ROOT="${ADAM_XLA_ROOT:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}"

_adam_xla_fail() {
  # $1: what failed, $2: the command that fixes it.
  echo "adam_xla: ERROR: $1" >&2
  echo "adam_xla: to fix: $2" >&2
  exit 1
}

ensure_bazel() {
  if command -v bazelisk >/dev/null 2>&1; then
    BAZEL="$(command -v bazelisk)"
    return
  fi
  if command -v bazel >/dev/null 2>&1; then
    BAZEL="$(command -v bazel)"
    return
  fi
  command -v apt-get >/dev/null 2>&1 ||
    _adam_xla_fail "no bazel or bazelisk on PATH and no apt-get to install one" \
      "install Bazel (https://bazel.build/install) or bazelisk, then rerun"
  local sudo=""
  if [[ "$(id -u)" != 0 ]]; then
    command -v sudo >/dev/null 2>&1 ||
      _adam_xla_fail "installing Bazel needs root and sudo is missing" \
        "as root: apt-get update && apt-get install -y bazel-bootstrap"
    sudo=sudo
  fi
  echo "adam_xla: installing Bazel (Debian package bazel-bootstrap) ..." >&2
  { $sudo apt-get update -q >&2 &&
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q bazel-bootstrap >&2; } ||
    _adam_xla_fail "apt-get could not install bazel-bootstrap" \
      "$sudo apt-get update && $sudo apt-get install -y bazel-bootstrap"
  BAZEL="$(command -v bazel)" ||
    _adam_xla_fail "bazel-bootstrap installed but no bazel on PATH" "ls /usr/bin/bazel*"
}

ensure_venv() {
  local venv="$ADAM_XLA_ROOT/.venv"
  local requirements="${ADAM_XLA_REQUIREMENTS:-$ADAM_XLA_ROOT/requirements.txt}"
  local python="${ADAM_XLA_PYTHON:-python3}"
  [[ -f "$requirements" ]] ||
    _adam_xla_fail "requirements file '$requirements' not found" \
      "set ADAM_XLA_REQUIREMENTS to an existing file, or git checkout requirements.txt"
  # The stamp records what the venv was built from; it is written last, so an interrupted
  # install is redone on the next call.
  local stamp="$venv/.adam_xla_stamp"
  local want
  want="$(cat "$requirements" | sha256sum | cut -d' ' -f1) $python"
  if [[ ! -f "$stamp" || "$(cat "$stamp")" != "$want" ]]; then
    command -v "$python" >/dev/null 2>&1 ||
      _adam_xla_fail "interpreter '$python' not found" \
        "install Python 3.10-3.12 (sudo apt-get install python3 python3-venv) or set ADAM_XLA_PYTHON"
    "$python" -c 'import sys; sys.exit(not (3, 10) <= sys.version_info[:2] <= (3, 13))' ||
      _adam_xla_fail "'$python' is Python $("$python" -c 'import platform; print(platform.python_version())'); TensorFlow 2.21 needs 3.10-3.13" \
        "set ADAM_XLA_PYTHON to a Python 3.10-3.13 interpreter"
    echo "adam_xla: creating $venv from $(basename "$requirements") (first use; about a minute) ..." >&2
    rm -f "$stamp"
    "$python" -m venv "$venv" >&2 ||
      _adam_xla_fail "'$python -m venv $venv' failed" \
        "sudo apt-get install python3-venv, then: rm -rf $venv && $0 $*"
    "$venv/bin/python" -m pip install -q --upgrade pip >&2 ||
      _adam_xla_fail "upgrading pip in $venv failed (network or index settings?)" \
        "$venv/bin/python -m pip install --upgrade pip"
    "$venv/bin/python" -m pip install -q -r "$requirements" >&2 ||
      _adam_xla_fail "'pip install -r $requirements' failed (see pip's message above)" \
        "$venv/bin/python -m pip install -r $requirements"
    echo "$want" >"$stamp"
  fi
  export VIRTUAL_ENV="$venv"
  export PATH="$venv/bin:$PATH"
}
