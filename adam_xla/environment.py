"""Internal: the TensorFlow releases adam_xla supports, checked when `adam_xla` is imported.

pip does not install TensorFlow for adam_xla: TensorFlow comes as several distributions
(tensorflow, tensorflow-cpu, tensorflow-tpu, tensorflow[and-cuda]) that all provide the
`tensorflow` module, and a hard requirement on one of them would make pip install it over the
one a GPU or TPU user chose. pyproject.toml offers one extra per distribution with
`TENSORFLOW_VERSIONS` instead, and `check_tensorflow` turns a missing or unsupported
TensorFlow into one ImportError that says what to install, rather than an obscure failure deep
inside the first step.
"""

import re

# Supported TensorFlow releases, by (major, minor): OLDEST <= release < BELOW, the releases the
# whole test suite has passed on (2.21, requirements.txt). Older ones are not claimed: under
# TensorFlow 2.16 with Keras 3.0 half of the test targets failed (Keras before 3.7 gives layers
# the backend's variable class, of which keras.Variable is only a subclass, among others).
# Newer ones are not claimed either: cpu_kernel.cc links against XLA's C++ custom call registry
# in libtensorflow_cc and cpu_kernel.py calls TensorFlow's internal XlaCallModule wrapper,
# neither of which is a stable API across releases.
OLDEST = (2, 21)
BELOW = (2, 22)
# The same range as a pip version specifier; pyproject.toml's extras must say exactly this
# (tests/pip_install_test.py checks).
TENSORFLOW_VERSIONS = f">={OLDEST[0]}.{OLDEST[1]},<{BELOW[0]}.{BELOW[1]}"

_FIX = ("Install a supported one, e.g. pip install "
        f'"tensorflow-cpu{TENSORFLOW_VERSIONS}" (or tensorflow, tensorflow[and-cuda] or '
        "tensorflow-tpu with the same range).")


def supported(version):
  """Whether TensorFlow `version` ("2.21.0", "2.21.0rc1", "2.17.0-dev20240301") is in range.

  Compares major and minor only, so that patch releases, release candidates and nightlies of a
  supported release are accepted without a parser for every version form TensorFlow uses.
  """
  match = re.match(r"(\d+)\.(\d+)", version)
  return bool(match) and OLDEST <= (int(match.group(1)), int(match.group(2))) < BELOW


def check_tensorflow():
  """Raises ImportError, naming the installed and supported versions and the pip command,
  unless a supported TensorFlow can be imported."""
  try:
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
  except ImportError as error:
    raise ImportError(f"adam_xla needs TensorFlow {TENSORFLOW_VERSIONS}, but `import "
                      f"tensorflow` failed ({error}). {_FIX}") from error
  version = getattr(tf, "__version__", "unknown")
  if not supported(version):
    raise ImportError(f"adam_xla supports TensorFlow {TENSORFLOW_VERSIONS}; the installed "
                      f"TensorFlow is {version}. {_FIX}")
